from training.experiments.cli import main

raise SystemExit(main())
