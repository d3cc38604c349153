"""The package's import graph has no cycles (docs/architecture.md), counting function-local imports too: a lazy
import that closes a cycle is still a cycle a reader has to untangle."""
from __future__ import annotations

import ast
from pathlib import Path

import theory_sim

ROOT = Path(theory_sim.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest known module the import names (``from pkg import mod`` imports pkg.mod)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            # a package's __init__ importing its own submodules is not a cycle of the submodule
            if u.startswith(v + ".") and graph.get(v) and u in graph[v]:
                continue
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if state.get(v) is None:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if state.get(u) is None:
            found = visit(u)
            if found:
                return found
    return None


def test_graph_sees_real_imports():
    g = import_graph()
    assert "theory_sim.cnn.model" in g["theory_sim.cnn.train"]
    assert "theory_sim.sweeps.verify" in g["theory_sim.sweeps.runner"]  # a function-local import counts


def test_no_import_cycle_inside_theory_sim():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_cycle_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def reports_importers(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Modules outside theory_sim.reports that import it, with what they import."""
    found = {m: sorted(t for t in deps if t.startswith("theory_sim.reports"))
             for m, deps in graph.items() if not m.startswith("theory_sim.reports")}
    return {m: t for m, t in found.items() if t}


def test_only_studies_import_the_reports():
    """docs/architecture.md: theory_sim.reports holds the studies' report logic; no module of the package outside it
    imports it (the verbs must not depend on a study's report)."""
    g = import_graph()
    assert reports_importers(g) == {}
    assert "theory_sim.sweeps.paired" in g["theory_sim.reports.sam_family"]  # the graph sees the reports' imports
    g["theory_sim.cli"] = g["theory_sim.cli"] | {"theory_sim.reports.gallery"}  # a verb importing a report: caught
    assert reports_importers(g) == {"theory_sim.cli": ["theory_sim.reports.gallery"]}


# ---- the arrows docs/architecture.md states --------------------------------------------------------------------------
P = "theory_sim."
# module -> every module of the package it may import directly (its own package's __init__ aside)
ONLY = {
    "config": {"theory_sim", "sam", "sam.registry"},   # package_version; the SAM-family rule list
    "io": {"config"},
    "seeding": set(),
    "intervals": set(),
    "claims": {"intervals"},
    "resources": {"config"},
    "sam.registry": set(),
    "sweeps.cells": {"config"},
    "sweeps.spec_toml": {"config", "resources", "sam", "sam.registry", "sweeps.cells"},
    "sweeps.slurm": set(),
    "sweeps.store": {"config", "io", "sweeps.cells", "sweeps.spec", "sweeps.slurm"},
}
# module or package -> what it must never reach, directly or through the modules it imports
CNN_VERBS = ("cnn.simulate_verb", "cnn.run_sharpness")
READERS = ("sweeps.verify", "sweeps.verify_report", "sweeps.trajectory_claims", "sweeps.figures",
           "sweeps.trajectory_figures", "sweeps.status")
NEVER = {
    "resources": ("cnn", "cifar"),          # each memory model sits beside what it models
    "sam": ("cnn", "cifar", "sweeps"),
    "sharpness": ("cnn", "cifar", "sweeps"),
    "cifar": ("cnn", "sweeps"),
    "cnn": ("sweeps", "cifar", "reports", "cli"),   # the model; its verbs are CNN_VERBS
    **{reader: ("sweeps.runner", "sweeps.search", "cnn.train") for reader in READERS},
}


def _within(module: str, prefix: str) -> bool:
    return module == P + prefix or module.startswith(P + prefix + ".")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for v in graph[todo.pop()] - seen:
            seen.add(v)
            todo.append(v)
    return seen


def arrow_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks ONLY or NEVER (a package's rule binds each of its modules but CNN_VERBS)."""
    found = []
    for name, allowed in ONLY.items():
        extra = {d for d in graph[P + name] if d.removeprefix(P) not in allowed and not
                 (P + name).startswith(d + ".")}
        found += [f"{name} imports {d}" for d in sorted(extra)]
    for prefix, forbidden in NEVER.items():
        for m in sorted(m for m in graph if _within(m, prefix) and m.removeprefix(P) not in CNN_VERBS):
            found += [f"{m} reaches {d}" for d in sorted(reachable(graph, m))
                      if any(_within(d, f) for f in forbidden)]
    return found


def test_the_documented_import_arrows_hold():
    g = import_graph()
    assert arrow_violations(g) == []
    # the rules see real imports: the memory models import resources, and the simulate verb only the store of sweeps
    assert P + "resources" in g[P + "cnn.memory"] and P + "resources" in g[P + "cifar.memory"]
    assert {d for d in g[P + "cnn.simulate_verb"] if _within(d, "sweeps")} == {P + "sweeps.store"}


def test_a_broken_arrow_is_caught():
    base = import_graph()
    for module, dep, rule in (("resources", "cnn.memory", "resources imports theory_sim.cnn.memory"),
                              ("resources", "cifar.config", "resources imports theory_sim.cifar.config"),
                              ("cnn.train", "sweeps.cells", "theory_sim.cnn.train reaches theory_sim.sweeps.cells"),
                              ("sweeps.status", "sweeps.runner", "sweeps.status reaches theory_sim.sweeps.runner"),
                              ("claims", "sweeps.cells", "claims imports theory_sim.sweeps.cells")):
        g = dict(base)
        g[P + module] = g[P + module] | {P + dep}
        assert any(rule in v for v in arrow_violations(g)), (module, dep)
    g = dict(base)   # through another module: the model reaching a sweep via a module it imports
    g[P + "cnn.data"] = g[P + "cnn.data"] | {P + "sweeps.cells"}
    assert "theory_sim.cnn.train reaches theory_sim.sweeps.cells" in arrow_violations(g)
