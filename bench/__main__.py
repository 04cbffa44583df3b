"""``python -m bench``: run the benchmark suite (``attack``/``soak``: issue 9's probes)."""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["attack"]:
    from bench.attack import main as attack

    raise SystemExit(attack(sys.argv[2:]))
if sys.argv[1:2] == ["soak"]:
    from bench.soak import main as soak

    raise SystemExit(soak(sys.argv[2:]))

from bench.run import main

raise SystemExit(main())
