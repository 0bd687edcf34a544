from ..._lazy import lazy_module_getattr
from .mean_teacher_hook import QVMeanTeacherHook
from .pseudo_label_vis_hook import QVPseudoLabelVisHook
from .stage_switch_hook import QVStageSwitchHook

__all__ = ['QVMeanTeacherHook', 'QVPseudoLabelVisHook', 'QVStageSwitchHook']
# mmpretrain HOOKS (MaO stage A): imported on first access and by queryvision_mm.mmpretrain_plugin
__getattr__ = lazy_module_getattr(__name__, {'QVSaveLoRAAdapterHook': '.lora_adapter_hook'})
