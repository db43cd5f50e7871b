from .imageset import ImageSet, Skipped, convert_batch, shrink_to_max_side
from .sources import SOURCES, load_source, read_idx, read_labels_file, register_source

__all__ = ["ImageSet", "Skipped", "convert_batch", "shrink_to_max_side", "SOURCES", "load_source", "read_idx", "read_labels_file", "register_source"]
