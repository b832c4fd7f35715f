"""A tiny ResNet-like backbone fast enough for 128x128 images on a couple of CPU cores."""
from typing import Dict, List

from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["TinyResNet", "build_tiny_backbone"]


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projection shortcut when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, dilation: int = 1):
        super().__init__()
        self.conv1 = Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=not norm,
                            norm=get_norm(norm, out_ch))
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=not norm,
                            norm=get_norm(norm, out_ch))
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = Conv2d(in_ch, out_ch, 1, stride=stride, bias=not norm, norm=get_norm(norm, out_ch))

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TinyResNet(Backbone):
    """Stem (two stride-2 3x3 convs, stride 4) followed by four stages ``res2..res5`` of basic blocks at
    strides 4, 8, 16, 32 — the same feature names and strides as detectron2's ResNet. A stage with a dilation
    above 1 keeps its input's stride and dilates its convolutions instead (DeepLab's output stride 8:
    ``dilations=(1, 1, 2, 4)``), for finer maps where a per-pixel model needs them (e.g. CAMs on small images)."""

    def __init__(self, *, in_channels: int = 3, stem_width: int = 24, widths: List[int] = (32, 64, 96, 128),
                 depths: List[int] = (1, 1, 2, 1), norm: str = "BN", out_features: List[str] = ("res5",),
                 dilations: List[int] = (1, 1, 1, 1)):
        """
        Args:
            in_channels: image channels.
            stem_width: channels of the stem.
            widths: channels of res2, res3, res4, res5.
            depths: basic blocks per stage.
            norm: detectron2 norm name ("BN", "GN", "SyncBN", "FrozenBN", "" for none).
            out_features: stages returned by ``forward``.
            dilations: per stage; > 1: stride 1 instead of 2, convolutions dilated by it.
        """
        super().__init__()
        assert len(widths) == 4 and len(depths) == 4
        if len(dilations) != 4 or min(dilations) < 1 or dilations[0] != 1:
            raise ValueError(f"TinyResNet: dilations {list(dilations)} must be 4 values >= 1 (res2..res5), res2's 1 "
                             "(MODEL.TINY.DILATIONS)")
        self.stem = nn.Sequential(
            Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=not norm, norm=get_norm(norm, stem_width),
                   activation=F.relu),
            Conv2d(stem_width, stem_width, 3, stride=2, padding=1, bias=not norm, norm=get_norm(norm, stem_width),
                   activation=F.relu),
        )
        self._out_features = list(out_features)
        self._out_feature_channels, self._out_feature_strides = {}, {}
        self.stage_names = []
        ch, stride = stem_width, 4
        num_stages = max(int(f[3:]) for f in self._out_features) - 1  # stages after the last output are not built
        for i, (w, d) in enumerate(list(zip(widths, depths))[:num_stages]):
            name = f"res{i + 2}"
            down = 2 if i > 0 and dilations[i] == 1 else 1
            blocks = [_BasicBlock(ch if j == 0 else w, w, down if j == 0 else 1, norm, dilations[i]) for j in range(d)]
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            stride *= down
            self._out_feature_channels[name] = w
            self._out_feature_strides[name] = stride
            ch = w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x) -> Dict:
        out = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
        return out

    def output_shape(self):
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_tiny_backbone(cfg, input_shape: ShapeSpec) -> TinyResNet:
    """``MODEL.BACKBONE.NAME: build_tiny_backbone``; sizes from ``MODEL.TINY``."""
    return TinyResNet(
        in_channels=input_shape.channels,
        stem_width=cfg.MODEL.TINY.STEM_WIDTH,
        widths=cfg.MODEL.TINY.WIDTHS,
        depths=cfg.MODEL.TINY.DEPTHS,
        norm=cfg.MODEL.TINY.NORM,
        out_features=cfg.MODEL.TINY.OUT_FEATURES,
        dilations=cfg.MODEL.TINY.DILATIONS,
    )
