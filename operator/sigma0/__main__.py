from sigma0.cli import main

raise SystemExit(main())
