"""The model contract shared by training and the service.

What a sharpcxr model *is*, independent of who trains or serves it:

* :mod:`cxrmodel.vocab`: the closed vocabularies (architecture, downsampling, dataset,
  backend, device, file kind) as string enums;
* :mod:`cxrmodel.resolution`: the one rule for a model's input resolution;
* :mod:`cxrmodel.interface`: the exported graph's tensor names and shapes;
* :mod:`cxrmodel.manifest`: one typed ``models/manifest.json`` entry, read and written;
* :mod:`cxrmodel.ood` and :mod:`cxrmodel.calibration`: how the served model's own
  out-of-distribution score and calibrated probability are computed (NumPy only);
* :mod:`cxrmodel.tensorrt`: the one availability rule for TensorRT;
* :mod:`cxrmodel.networks`, :mod:`cxrmodel.antialias`, :mod:`cxrmodel.checkpoint`: the
  torch side (architectures, anti-aliased pooling, checkpoint save/load/rebuild).

Importing this package, or any of its torch-free modules, does not import torch: the
ONNX Runtime service depends on that (``tests/test_import_graph.py``).
"""
