"""``python -m fastconv`` runs the command-line interface."""

from fastconv.cli import main

raise SystemExit(main())
