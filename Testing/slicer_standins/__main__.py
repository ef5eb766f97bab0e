"""`python -m slicer_standins MODULE.py`: what Slicer's ctest does for a scripted module (slicer.testing.runUnitTest):
load the module file and run the test cases it defines with unittest, here on the stand-ins."""

import importlib
import sys
import unittest
from pathlib import Path

from slicer_standins import install

install()
script = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(script.parent))
module = importlib.import_module(script.stem)
result = unittest.TextTestRunner(verbosity=2).run(unittest.TestLoader().loadTestsFromModule(module))
sys.exit(0 if result.wasSuccessful() else 1)
