"""``python -m flashlight_hf`` runs the same CLI as the ``flashlight-hf`` console script."""

from flashlight_hf.cli import main

raise SystemExit(main())
