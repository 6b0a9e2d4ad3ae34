"""Config specs: pydantic models and the Hydra loader."""

from ragconf.spec.loader import BUILTIN_CONFIG_DIR, LoadedConfig, config_hash, expand_sweep, load_config
from ragconf.spec.models import RagconfSpec

__all__ = ["BUILTIN_CONFIG_DIR", "LoadedConfig", "RagconfSpec", "config_hash", "expand_sweep", "load_config"]
