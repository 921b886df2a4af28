"""Writing files and folders so that nothing is lost or half-written, and caching arrays on disk.

- atomic:    single files written atomically (temporary file, fsync, rename)
- ownership: the `.mucs` marker that tells the folders this project wrote from the user's
- outputs:   checks on an output path before anything is computed
- locks:     the lock that serialises writers of one folder
- recovery:  undoing what an interrupted folder swap left
- swaps:     crash-safe folder swaps (build beside, rename in)
- arrays:    keyed on-disk caches of arrays (safetensors, key and checksum in the header)
- memo:      a bounded in-memory LRU memo
"""
from .arrays import EXT as CACHE_EXT
from .arrays import cache_file, cache_key, check_cache_file, load_arrays, save_arrays, save_arrays_best_effort
from .atomic import STALE_SECONDS, atomic_write, atomic_write_with, default_cache_dir
from .locks import SWAP_LOCK_FILE, swap_lock
from .memo import BoundedMemo, nbytes
from .outputs import check_not_an_input, check_out_dir, check_out_file, check_writable_dir
from .ownership import KEEP, KIND_FILES, MARKER, folder_kind, marker_bytes, write_marker, write_tree, written_by_us
from .recovery import recover_dir, recover_for_reading, recover_moved_aside
from .swaps import atomic_write_dir, move_dir_into_place, staging_dir

__all__ = ["CACHE_EXT", "cache_file", "cache_key", "check_cache_file", "load_arrays", "save_arrays", "save_arrays_best_effort",
           "STALE_SECONDS", "atomic_write", "atomic_write_with", "default_cache_dir", "SWAP_LOCK_FILE", "swap_lock",
           "BoundedMemo", "nbytes", "check_not_an_input", "check_out_dir", "check_out_file", "check_writable_dir",
           "KEEP", "KIND_FILES", "MARKER", "folder_kind", "marker_bytes", "write_marker", "write_tree", "written_by_us",
           "recover_dir", "recover_for_reading", "recover_moved_aside", "atomic_write_dir", "move_dir_into_place",
           "staging_dir"]
