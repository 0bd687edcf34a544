"""Offline open_clip loading and class-name text embeddings on a tiny randomly initialised CLIP of the real class."""
import pytest
import torch

open_clip = pytest.importorskip('open_clip')

from queryvision_mm.utils.open_clip_loader import load_open_clip, save_open_clip_dir  # noqa: E402
from queryvision_mm.utils.text_embeddings import (encode_class_names, load_class_embeddings,  # noqa: E402
                                                  save_class_embeddings, templates_digest)

TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))


@pytest.fixture(scope='module')
def tiny_clip(tmp_path_factory):
    torch.manual_seed(0)
    ref = open_clip.CLIP(**TINY).eval()
    name = save_open_clip_dir(ref, TINY, str(tmp_path_factory.mktemp('tiny_clip')))
    model, preprocess, tokenizer = load_open_clip(name)
    return ref, model, tokenizer, name


def test_local_dir_roundtrip(tiny_clip):
    ref, model, tokenizer, _ = tiny_clip
    tokens = tokenizer(['a photo of a dog.', 'a cat'])
    torch.testing.assert_close(model.encode_text(tokens), ref.encode_text(tokens))
    assert not model.training


def test_template_mean_and_normalisation(tiny_clip):
    _, model, tokenizer, _ = tiny_clip
    names = ['dog', 'traffic light', 'dog']
    templates = ['a photo of a {}.', 'there is a {} in the scene.']
    emb = encode_class_names(model, tokenizer, names, templates, batch_size=2)
    assert emb.shape == (3, 32)
    manual = model.encode_text(tokenizer([t.format('traffic light') for t in templates])).mean(0)
    torch.testing.assert_close(emb[1], manual.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb[0], emb[2])
    normed = encode_class_names(model, tokenizer, names, templates, normalize_each=True, normalize_mean=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize('names,templates,match', [
    ([], ['{}'], 'class_names is empty'),
    (['dog', ''], ['{}'], r'class_names\[1\]'),
    (['dog'], ['a photo'], 'placeholder'),
])
def test_bad_inputs(tiny_clip, names, templates, match):
    _, model, tokenizer, _ = tiny_clip
    with pytest.raises(ValueError, match=match):
        encode_class_names(model, tokenizer, names, templates)


def test_embedding_file_roundtrip_and_checks(tmp_path):
    emb = torch.randn(3, 8)
    path = str(tmp_path / 'emb.safetensors')
    save_class_embeddings(path, emb, ['a', 'b', 'c'], meta=dict(model='tiny', templates=templates_digest(['{}'])))
    loaded, names, meta = load_class_embeddings(path, expected_class_names=['a', 'b', 'c'])
    torch.testing.assert_close(loaded, emb)
    assert names == ['a', 'b', 'c'] and meta['model'] == 'tiny'
    with pytest.raises(ValueError, match=r'emb\.safetensors: holds 3 classes, the dataset has 2'):
        load_class_embeddings(path, expected_class_names=['a', 'b'])
    with pytest.raises(ValueError, match=r"class 1 is 'b' in the file but 'B'"):
        load_class_embeddings(path, expected_class_names=['a', 'B', 'c'])
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        load_class_embeddings(str(tmp_path / 'missing.safetensors'))
    with pytest.raises(ValueError, match='do not match 2 class names'):
        save_class_embeddings(path, emb, ['a', 'b'])


def test_loader_refuses_downloads_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrained tag would be downloaded'):
        load_open_clip('ViT-B-16', pretrained='openai')
    with pytest.raises(FileNotFoundError, match='nope.safetensors'):
        load_open_clip('ViT-B-16', pretrained=str(tmp_path / 'nope.safetensors'))
    with pytest.raises(ValueError, match='hub'):
        load_open_clip('hf-hub:timm/ViT-B-16-SigLIP')
    with pytest.raises(FileNotFoundError, match='open_clip_config.json'):
        load_open_clip('local-dir:' + str(tmp_path))


def test_make_category_embeddings_tool(tiny_clip, tmp_path):
    """tools/misc/make_category_embeddings.py through the real loader; names that collide stay separate rows."""
    import json
    from conftest import REPO, load_module_from_path
    tool = load_module_from_path('qv_make_category_embeddings', f'{REPO}/tools/misc/make_category_embeddings.py')
    _, model, tokenizer, name = tiny_clip
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(dict(categories=[dict(id=7, name='guitar (instrument)'), dict(id=3, name='battery'),
                                               dict(id=5, name='battery')])))
    out = str(tmp_path / 'emb.safetensors')
    assert tool.main([str(ann), out, '--model', name, '--templates', 'ensemble', '--batch-size', '50']) == 0
    emb, names, meta = load_class_embeddings(out, expected_class_names=['battery', 'battery', 'guitar (instrument)'])
    assert json.loads(meta['category_ids']) == [3, 5, 7], 'id order, ids kept'
    ref = encode_class_names(model, tokenizer, names, tool.TEMPLATE_SETS['ensemble'])
    torch.testing.assert_close(emb, ref)
    txt = tmp_path / 'names.txt'
    txt.write_text('dog\n\ncat\n')
    with pytest.raises(ValueError, match=r'names\.txt: line 2 is empty'):
        tool.main([str(txt), out, '--model', name])
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        tool.main([str(tmp_path / 'nope.txt'), out, '--model', name])
    with pytest.raises(SystemExit, match='random weights'):
        tool.main([str(ann), out, '--model', 'ViT-B-16'])


def test_qks_prompt_pool_and_seen_unseen_lists(tiny_clip, tmp_path):
    from conftest import REPO, load_module_from_path
    tool = load_module_from_path('qv_make_category_embeddings2', f'{REPO}/tools/misc/make_category_embeddings.py')
    pool = tool.read_templates('qks_pool')
    assert len(pool) == 85 and pool[-1] == 'this is one {} in the scene.' and pool[0] == 'a bad photo of a {}.'
    _, model, tokenizer, name = tiny_clip
    (tmp_path / 'seen.txt').write_text('cat\ndog\n')
    (tmp_path / 'unseen.txt').write_text('bus\n')
    out = str(tmp_path / 'labels.safetensors')
    assert tool.main([str(tmp_path / 'seen.txt'), str(tmp_path / 'unseen.txt'), out, '--model', name,
                      '--templates', 'qks_pool']) == 0
    emb, names, meta = load_class_embeddings(out, expected_class_names=['cat', 'dog', 'bus'])
    torch.testing.assert_close(emb, encode_class_names(model, tokenizer, names, pool))
    assert meta['classes_file'] == 'seen.txt,unseen.txt' and meta['num_templates'] == '85'
