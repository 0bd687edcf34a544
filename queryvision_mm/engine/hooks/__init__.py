from .lora_adapter_hook import QVSaveLoRAAdapterHook
from .mean_teacher_hook import QVMeanTeacherHook
from .stage_switch_hook import QVStageSwitchHook

__all__ = ['QVSaveLoRAAdapterHook', 'QVMeanTeacherHook', 'QVStageSwitchHook']
