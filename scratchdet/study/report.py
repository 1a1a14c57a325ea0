"""Moved to `scratchdet.report.page` (the report half of a study left study/ for report/). This name stays for one
release so that scripts and notebooks written against it keep working; it is the very same module object, private
names included, and importing it warns once.
"""

import importlib
import sys
import warnings

warnings.warn(
    "scratchdet.study.report moved to scratchdet.report.page; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("scratchdet.report.page")
