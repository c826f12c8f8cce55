"""``python -m chatmem.cli``: the same as the ``chatmem`` console script."""

from chatmem.cli import main

raise SystemExit(main())
