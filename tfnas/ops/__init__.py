"""Operations, one concept per module; every op is created by name through `registry.create` (importing
this package registers them all).

    layer.py            OpLayer, the base of every op (descriptor, compiler options, k copies)
    batchnorm.py        fused BatchNorm with moving statistics, weighted or not
    conv.py             convolutions that record only the gradients a tape needs
    depthwise_grad.py   the depthwise filter gradient in 3-column blocks
    depthwise_block.py  relu-bn-depthwise-1x1 as one op that holds less for the backward pass
    channels.py         tile_channels (k copies on the channel axis)
    relu.py             ReLU, in bfloat16 by its bits
    space_to_batch.py   the block layout of dilated convs
    constants.py        per-graph shared constants
    darts.py            the DARTS candidates and cell preprocessing
    mixed.py            the DARTS mixed op
    petridish.py        the PetriDish candidate op and the join it finalises into
    structural.py       stem, projecting cell output, pooling, classifier, auxiliary tower
"""
from tfnas.ops import darts, mixed, petridish, structural  # noqa: F401  (registration)
from tfnas.ops.registry import OpError, create, is_registered, names

__all__ = ["OpError", "create", "is_registered", "names"]
