"""Per-bag feature files, the contract between extraction and training: one HDF5 file or zarr v3 directory store
per slide or patient.

Layout, format "cmamil.features" version 1::

    <bag_id>.h5 (or <bag_id>.zarr)
      attrs             format="cmamil.features", format_version, bag_id, finest (the finest magnification),
                        has_features, cmamil_version, created (UTC ISO time), and the writer's provenance: source
                        (path, size, mtime), mpp, mpp_source, objective_power, encoder, encoder_weights (sha256 or
                        "random"), tile_px, tissue settings, extract_settings and its sha256 fingerprint …
      /<mag>/features   (N, D) float32 or float16; absent in a coordinate-only file (the tiling stage)
      /<mag>/coords     (N, 2) int64 level-0 top-left x, y; attrs magnification (= <mag>), mpp,
                        tile_size_level0, read_level …
      /<mag>/parent     (N,) int64 row of the enclosing tile in the next coarser magnification, -1 where none
      /features, /coords  HDF5 soft links to the finest magnification, so CLAM/TRIDENT-style loaders read the file
                        as is (zarr has no links: read the attribute `finest`)

`<mag>` is a canonical magnification name (`cmamil.magnification`): '5x', '10x', '20x', '400x' … or '<mpp>um'.
Row i of features, coords and parent is the same tile; the coarsest magnification, and every magnification of an
image set, has parent -1 everywhere.

Attribute values that are not str/int/float/bool are stored as JSON strings and their names listed in the root
attribute `json_attrs`; reading decodes them back. Files are written under a unique hidden temporary name
(`.<bag_id>.h5.<pid>-<random>.tmp`) and renamed when complete, so a file under its final name is finished.

Foreign single-magnification files are read as bags too: CLAM/TRIDENT (`features`, `coords`), STAMP/MoPaDi
(`feats`, `coords`, often as `<bag_id>/features.h5`), `features` alone. Such a file is one magnification named
by the caller, by TRIDENT's `coords.attrs["target_magnification"]`, or "all".
"""

from cmamil.store._format import (
    FOREIGN_MAGNIFICATION,
    FORMAT,
    FORMAT_VERSION,
    StorageFormat,
    bag_id_from_path,
    bag_path,
    storage_format,
)
from cmamil.store.listing import is_complete, list_bags
from cmamil.store.reader import BagInfo, bag_info, read_bag, read_coords
from cmamil.store.writer import BagWriter, remove_temporaries

__all__ = [
    "FOREIGN_MAGNIFICATION",
    "FORMAT",
    "FORMAT_VERSION",
    "BagInfo",
    "BagWriter",
    "StorageFormat",
    "bag_id_from_path",
    "bag_info",
    "bag_path",
    "is_complete",
    "list_bags",
    "read_bag",
    "read_coords",
    "remove_temporaries",
    "storage_format",
]
