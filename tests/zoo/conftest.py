"""The zoo tests import bench.zoo: the repository root goes on sys.path (pytest puts only tests/ there)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
