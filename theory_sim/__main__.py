from theory_sim.cli import main

raise SystemExit(main())
