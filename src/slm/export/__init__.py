"""Export and import of trained models: Hugging Face `transformers` folders (and GGUF import through transformers).

`hf` is a state-dict adapter whose name and config mappings are tables (`PARAM_MAP`, `CONFIG_MAP`), used in both
directions; heavy optional dependencies (transformers, gguf) are imported only by the functions that need them.
"""

from .hf import (CONFIG_MAP, PARAM_MAP, export_hf, from_hf_name, import_gguf_via_transformers, import_hf,
                 model_config_from_hf, model_config_to_hf, read_hf_weights, state_dict_from_hf, to_hf_name)

__all__ = ["CONFIG_MAP", "PARAM_MAP", "export_hf", "from_hf_name", "import_gguf_via_transformers", "import_hf",
           "model_config_from_hf", "model_config_to_hf", "read_hf_weights", "state_dict_from_hf", "to_hf_name"]
