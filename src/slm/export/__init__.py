"""Export and import of trained models: Hugging Face `transformers` folders (and GGUF import through transformers),
GGUF for llama.cpp, ONNX Runtime graphs, Core ML packages, and `slm push` to the Hub.

File I/O only: names and config mappings come from each architecture's `HFAdapter` / `GGUFAdapter` in `slm.models`;
heavy optional dependencies (transformers, gguf, onnxscript, onnxruntime, coremltools, huggingface_hub) are imported
only by the functions that need them.
"""

from .coreml import export_coreml
from .gguf import export_gguf
from .hf import (adapter_of, export_hf, import_gguf_via_transformers, import_hf, model_config_from_hf,
                 model_config_to_hf, read_hf_weights, state_dict_from_hf, to_hf_name)
from .hub import push
from .onnx import export_onnx

__all__ = ["adapter_of", "export_coreml", "export_gguf", "export_hf", "export_onnx", "import_gguf_via_transformers",
           "import_hf", "model_config_from_hf", "model_config_to_hf", "push", "read_hf_weights",
           "state_dict_from_hf", "to_hf_name"]
