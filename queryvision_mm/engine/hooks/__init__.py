from .lora_adapter_hook import QVSaveLoRAAdapterHook
from .mean_teacher_hook import QVMeanTeacherHook
from .pseudo_label_vis_hook import QVPseudoLabelVisHook
from .stage_switch_hook import QVStageSwitchHook

__all__ = ['QVSaveLoRAAdapterHook', 'QVMeanTeacherHook', 'QVPseudoLabelVisHook', 'QVStageSwitchHook']
