"""`python -m taskadapter_fast.corpus {generate,fetch}`: sub-action corpus tools.

A thin entry point; the work is in `taskadapter_fast.data.corpus`.
"""

from __future__ import annotations

from taskadapter_fast.data.corpus import main

if __name__ == "__main__":
    raise SystemExit(main())
