"""`python -m xtm_composer.sandbox ARGS`, the same as `xtm-composer sandbox ARGS`."""

from xtm_composer.sandbox.cli import main

raise SystemExit(main())
