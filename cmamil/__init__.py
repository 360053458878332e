"""cmamil: multi-magnification tiling, feature extraction and MIL / patch-model training for pathology.

Importing the package is cheap: torch, timm and h5py are imported by the modules that need them.
"""

from cmamil.errors import CmamilError

__version__ = "0.1.0"

__all__ = ["CmamilError", "__version__"]
