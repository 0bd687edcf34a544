"""BLIP-2-style Q-Former over image tokens (QKS's knowledge-extraction module), built on mmpretrain's Q-Former code
with a hard-coded BERT-base configuration (no hub download)."""
from typing import Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmpretrain.registry import MODELS


@MODELS.register_module()
class QVQFormerNeck(BaseModule):
    """``num_queries`` learnable, label-agnostic query tokens -> ``num_layers`` BERT layers, each with self-attention
    over the queries, cross-attention to the image tokens (every ``cross_attention_freq`` layers; QKS: every layer)
    and an FFN (post-LN), randomly initialised (std ``init_std``). Returns ``(B, num_queries, hidden)``.

    QKS: 7 layers / 12 queries (NUS-WIDE), 8 / 22 (Open Images); hidden 768, 12 heads, FFN 3072, dropout 0.1.
    The BERT word/position tables of the text path are not used (queries only); they are shrunk to one row and
    frozen so that they neither cost memory nor trip DDP's unused-parameter check. Likewise every layer's text-token
    FFN (``intermediate`` / ``output``; the queries go through ``intermediate_query`` / ``output_query``) is frozen:
    trainable but never used, it stopped DDP training at its second iteration ("Expected to have finished reduction
    in the prior iteration"). Its keys stay in the state dict (checkpoints keep loading).
    """

    def __init__(self, num_layers: int = 7, num_queries: int = 12, encoder_width: int = 768, hidden_size: int = 768,
                 num_heads: int = 12, ffn_dims: int = 3072, dropout: float = 0.1, cross_attention_freq: int = 1,
                 init_std: float = 0.02, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        from transformers import BertConfig

        from mmpretrain.models.multimodal.blip2.Qformer import BertModel
        cfg = BertConfig(vocab_size=1, hidden_size=hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, intermediate_size=ffn_dims, hidden_act='gelu',
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, max_position_embeddings=1,
                         type_vocab_size=2, initializer_range=init_std, layer_norm_eps=1e-12, pad_token_id=0)
        cfg.add_cross_attention = True
        cfg.encoder_width = encoder_width
        cfg.cross_attention_freq = cross_attention_freq
        cfg.query_length = num_queries
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.bert.embeddings.word_embeddings.requires_grad_(False)
        self.bert.embeddings.position_embeddings.requires_grad_(False)
        for layer in self.bert.encoder.layer:  # the text-token FFN: queries use intermediate_query / output_query
            layer.intermediate.requires_grad_(False)
            layer.output.requires_grad_(False)
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden_size) * init_std)
        self.num_queries = num_queries

    def init_weights(self) -> None:
        pass  # BERT's own initialisation ran at construction (normal(0, init_std), LayerNorm 1/0)

    def forward(self, inputs: Tuple[Tensor]) -> Tuple[Tensor]:
        image = inputs[-1]
        queries = self.query_tokens.expand(image.size(0), -1, -1)
        out = self.bert(query_embeds=queries, encoder_hidden_states=image,
                        encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=image.device),
                        return_dict=True)
        return (out.last_hidden_state[:, :self.num_queries], )
