from xtm_composer.cli import main

raise SystemExit(main())
