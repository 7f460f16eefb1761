"""Export and import of trained models: Hugging Face `transformers` folders (and GGUF import through transformers).

File I/O only: names and config mappings come from each architecture's `HFAdapter` in `slm.models`; heavy optional
dependencies (transformers, gguf) are imported only by the functions that need them.
"""

from .hf import (adapter_of, export_hf, import_gguf_via_transformers, import_hf, model_config_from_hf,
                 model_config_to_hf, read_hf_weights, state_dict_from_hf, to_hf_name)

__all__ = ["adapter_of", "export_hf", "import_gguf_via_transformers", "import_hf", "model_config_from_hf",
           "model_config_to_hf", "read_hf_weights", "state_dict_from_hf", "to_hf_name"]
