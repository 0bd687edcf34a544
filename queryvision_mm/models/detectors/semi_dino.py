"""DINO that can prepend extra query groups (consistency / refined queries) to its decoder input."""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from mmengine.structures import InstanceData

from mmdet.models.detectors import DINO
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample, OptSampleList

from ..layers.consistency_queries import build_extra_query_attn_mask


@MODELS.register_module()
class QVSemiDINO(DINO):
    """DINO with two extension points used by the semi-supervised wrappers.

    ``forward_transformer`` accepts:

    * ``extra_queries``: ``dict(query=(B, P, D), reference_unact=(B, P, 4), num_groups=G)`` prepended
      to the decoder input as ``[extra | denoising | matching]`` with the mask of
      :func:`build_extra_query_attn_mask`; their per-layer hidden states are returned as
      ``extra_hidden_states`` (L, B, P, D) and removed from what the head sees.
    * ``with_dn``: switch the contrastive denoising queries off in training (e.g. pseudo-labels in
      the one-to-many stage, whose denoising loss is zero in Semi-DETR).
    * ``encoder_outputs``: reuse an encoder pass (returned under ``encoder_outputs`` when
      ``return_encoder_outputs=True``) to decode again without recomputing backbone and encoder.

    Without these arguments it behaves exactly like :class:`mmdet.models.DINO`.
    """

    def forward_transformer(self,
                            img_feats: Tuple[Tensor],
                            batch_data_samples: OptSampleList = None,
                            extra_queries: Optional[dict] = None,
                            with_dn: Optional[bool] = None,
                            encoder_outputs: Optional[dict] = None,
                            return_encoder_outputs: bool = False) -> Dict:
        encoder_inputs_dict, decoder_inputs_dict = self.pre_transformer(img_feats, batch_data_samples)
        if encoder_outputs is None:
            encoder_outputs = self.forward_encoder(**encoder_inputs_dict)
        tmp_dec_in, head_inputs_dict = self.pre_decoder(
            **encoder_outputs, batch_data_samples=batch_data_samples, extra_queries=extra_queries, with_dn=with_dn)
        decoder_inputs_dict.update(tmp_dec_in)
        decoder_outputs_dict = self.forward_decoder(**decoder_inputs_dict)

        num_extra = 0 if extra_queries is None else extra_queries['query'].size(1)
        if num_extra > 0:
            hidden = decoder_outputs_dict['hidden_states']
            head_inputs_dict['extra_hidden_states'] = hidden[:, :, :num_extra]
            head_inputs_dict['extra_references'] = [r[:, :num_extra] for r in decoder_outputs_dict['references']]
            decoder_outputs_dict = dict(
                hidden_states=hidden[:, :, num_extra:],
                references=[r[:, num_extra:] for r in decoder_outputs_dict['references']])
        head_inputs_dict.update(decoder_outputs_dict)
        if return_encoder_outputs:
            head_inputs_dict['encoder_outputs'] = encoder_outputs
        return head_inputs_dict

    def pre_decoder(self,
                    memory: Tensor,
                    memory_mask: Tensor,
                    spatial_shapes: Tensor,
                    batch_data_samples: OptSampleList = None,
                    extra_queries: Optional[dict] = None,
                    with_dn: Optional[bool] = None) -> Tuple[Dict]:
        if self.training and with_dn is False and batch_data_samples is not None:
            # no denoising queries: give the query generator no targets instead of building and dropping them
            batch_data_samples = [_without_targets(s) for s in batch_data_samples]
        decoder_inputs_dict, head_inputs_dict = super().pre_decoder(
            memory, memory_mask, spatial_shapes, batch_data_samples=batch_data_samples)
        dn_mask = decoder_inputs_dict['dn_mask']
        if self.training and with_dn is False and dn_mask is not None:
            num_dn = head_inputs_dict['dn_meta']['num_denoising_queries']
            decoder_inputs_dict['query'] = decoder_inputs_dict['query'][:, num_dn:]
            decoder_inputs_dict['reference_points'] = decoder_inputs_dict['reference_points'][:, num_dn:]
            decoder_inputs_dict['dn_mask'] = dn_mask = None
            head_inputs_dict['dn_meta'] = None
        if extra_queries is not None and extra_queries['query'].size(1) > 0:
            query = extra_queries['query']
            num_groups = int(extra_queries.get('num_groups', 1))
            assert query.size(1) % num_groups == 0, 'extra queries must split into equal groups'
            decoder_inputs_dict['query'] = torch.cat([query, decoder_inputs_dict['query']], dim=1)
            decoder_inputs_dict['reference_points'] = torch.cat(
                [extra_queries['reference_unact'].sigmoid(), decoder_inputs_dict['reference_points']], dim=1)
            decoder_inputs_dict['dn_mask'] = build_extra_query_attn_mask(
                num_groups, query.size(1) // num_groups, self.num_queries, dn_mask=dn_mask, device=query.device)
        return decoder_inputs_dict, head_inputs_dict


def _without_targets(sample: DetDataSample) -> DetDataSample:
    gt = sample.gt_instances
    return DetDataSample(metainfo=sample.metainfo, gt_instances=InstanceData(bboxes=gt.bboxes[:0], labels=gt.labels[:0]))
