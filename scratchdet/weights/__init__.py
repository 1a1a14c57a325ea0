"""Other people's weight files and their conventions: reading them, renaming them, auditing and loading them.

modeling/ builds models only; everything that depends on where a pre-trained file came from lives here:

- files.py: reading a weight file without running code from it (`torch.load(weights_only=True)`, safetensors, a
  numpy-only unpickler for Detectron pickles), choosing the network of a checkpoint that holds several
  (`checkpoint_key`), unwrapping the common wrappers, numpy arrays as tensors.
- hub.py: the config.json / preprocessor_config.json beside a timm or Hugging Face transformers weight file.
- names.py: name maps from each source layout (torchvision, scratchdet, Detectron's Caffe2, Detectron2,
  transformers; the prefixed layouts of MoCo, DINO, Barlow Twins, SwAV and OpenMMLab with their heads set aside by
  rule) to our torchvision-style names, prefix stripping, the kind of norm layers the file had; `read_weight_file`.
- convention.py: input conventions (channel order, pixel scale, mean/std, stride placement) as values, the
  published ones as constants, and which one a file was trained with (`read_weight_convention`).
- audit.py: `load_backbone_weights`: the audit of a file against a ResNet body (`WeightReport`: coverage, missing,
  unexpected and mismatched keys), the norm-mismatch policy, then the load.
- vgg.py: ImageNet VGG-16 weights into the VGG-16 body and the box head's fc6/fc7, with the same audit.
- initialization.py: `init=scratch|pretrained` applied to a built detector and recorded in init.json; the input
  convention resolved before the detector is built; the samples the pre-training saw.

Applying a convention in the model (the transform, the stride placement) is modeling/input_transform.py's. Import
direction: modeling/ imports weights/ (the convention values) at module level, never the other way round; the two
functions here that need a built model's parts import them when called (audit.describe_body,
initialization.initialize).
"""
