"""Model compression, each method measured before and after (README section "compress").

- ``prune``: structured channel pruning (Torch-Pruning; ``l1``, ``bn_scale``) and unstructured
  ``magnitude`` pruning; ``BNSparsity`` for network-slimming sparse training.
- ``quantize``: ONNX Runtime static/dynamic INT8, OpenVINO NNCF INT8 (with accuracy control);
  ``qat``: quantization-aware training with torch fake-quant, exported as QDQ ONNX.
- ``distill``: response, FitNet, attention-transfer and Hinton distillation by name.
- ``lowrank``: SVD and CP (tensorly) decomposition.
- ``recipe``: ``litedet compress --recipe`` chains steps; ``report``: one before/after table.
- ``checkpoint``: saving/loading pruned or decomposed torch models.

Submodules are imported on use; ``quantize`` and ``report`` need no torch until a torch model
is involved.
"""
