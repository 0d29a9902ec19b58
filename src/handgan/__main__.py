from handgan.cli import main

raise SystemExit(main())
