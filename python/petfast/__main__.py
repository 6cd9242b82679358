from petfast.cli import main

raise SystemExit(main())
