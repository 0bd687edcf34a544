"""open_clip use without unpinned private API (issue 16, item 5): ``QVCLIPVisionTokens`` goes through the public
``VisionTransformer.forward_intermediates``; LeGrad's private ``_embeds`` / ``_pool`` calls are pinned to one
open_clip release, and another release is refused with a clear error."""
import pytest
import torch

open_clip = pytest.importorskip('open_clip')
DEFAULT_SCOPE = 'mmpretrain'
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
            text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))


def test_clip_vision_tokens_equal_the_tower_internals(tmp_path):
    from queryvision_mm.models import QVCLIPVisionTokens
    from queryvision_mm.utils.open_clip_loader import save_open_clip_dir
    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY).eval()
    tower = QVCLIPVisionTokens(save_open_clip_dir(clip, TINY, str(tmp_path / 'clip')))
    x = torch.randn(2, 3, 32, 32)
    v = clip.visual
    with torch.no_grad():
        ref = v.ln_post(v.transformer(v._embeds(x)))   # what the private path computed
        tokens, = tower(x)
    assert tokens.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(tokens, ref)


def test_legrad_refuses_another_open_clip(monkeypatch):
    from queryvision_mm.models.layers.legrad import LeGradOpenCLIP
    from queryvision_mm.utils.open_clip_loader import OPEN_CLIP_PRIVATE_API_VERSION
    visual = open_clip.CLIP(**TINY).visual
    assert open_clip.__version__ == OPEN_CLIP_PRIVATE_API_VERSION   # the pinned release is the installed one
    LeGradOpenCLIP(visual)
    monkeypatch.setattr(open_clip, '__version__', '9.9.9')
    with pytest.raises(RuntimeError, match=r'open_clip_torch==3\.3\.0.*installed: 9\.9\.9'):
        LeGradOpenCLIP(visual)
