"""ComfyUI nodes of the pack: thin wrappers that validate, call `vidinv`, and wrap outputs."""
from . import host
from .common import guard
from .native_nodes import NativeFlowEdit, NativeInvert, NativeLoadTrajectory, NativeReferenceAttention
from .flowedit_nodes import FlowEdit
from .cogvideox_nodes import (DDIMInvert, DDIMSample, EncodeText, LoadCogVideoX, NullTextInversion,
                              PromptTuningInversion)
from .pipeline_nodes import FriendlyInvert, FriendlySample, GuidedSample, ReferenceAttention
from .svd_nodes import LoadSVD, SVDEncodeFirstFrame, SVDGuidedSample, SVDInvert, SVDSample
from .trajectory_nodes import LoadTrajectory, SaveTrajectory
from .vae_nodes import VAEDecodeVideo, VAEEncodeVideo
from .wan_nodes import LoadWan, WanEncodeText, WanInvert, WanSample

host.register_model_folders()
host.install_sample_media()

NODES = {
    # key (saved in workflows: never rename): (class, display name)
    "VInvLoadCogVideoX": (LoadCogVideoX, "Load CogVideoX Model"),
    "VInvEncodeText": (EncodeText, "Encode Text (CogVideoX)"),
    "VInvVAEEncode": (VAEEncodeVideo, "VAE Encode Video"),
    "VInvVAEDecode": (VAEDecodeVideo, "VAE Decode Video"),
    "VInvDDIMInvert": (DDIMInvert, "DDIM Invert (exact)"),
    "VInvDDIMSample": (DDIMSample, "DDIM Sample"),
    "VInvReferenceAttention": (ReferenceAttention, "Reference Attention"),
    "VInvGuidedSample": (GuidedSample, "Guided Sample"),
    "VInvNullTextInversion": (NullTextInversion, "Null-Text Inversion"),
    "VInvPromptTuningInversion": (PromptTuningInversion, "Prompt-Tuning Inversion"),
    "VInvSaveTrajectory": (SaveTrajectory, "Save Trajectory"),
    "VInvLoadTrajectory": (LoadTrajectory, "Load Trajectory"),
    "VInvLoadSVD": (LoadSVD, "Load SVD Model"),
    "VInvSVDEncodeFirstFrame": (SVDEncodeFirstFrame, "Encode First Frame (SVD)"),
    "VInvSVDInvert": (SVDInvert, "Euler Invert (SVD, exact)"),
    "VInvSVDSample": (SVDSample, "Euler Sample (SVD)"),
    "VInvSVDGuidedSample": (SVDGuidedSample, "Guided Sample (SVD)"),
    "VInvLoadWan": (LoadWan, "Load Wan Model"),
    "VInvWanEncodeText": (WanEncodeText, "Encode Text (Wan)"),
    "VInvWanInvert": (WanInvert, "Flow Invert (Wan, exact)"),
    "VInvWanSample": (WanSample, "Flow Sample (Wan)"),
    "VInvFlowEdit": (FlowEdit, "FlowEdit (flow models)"),
    "VInvFriendlyInvert": (FriendlyInvert, "Edit-Friendly Invert (DDPM)"),
    "VInvFriendlySample": (FriendlySample, "Edit-Friendly Sample (DDPM)"),
    "VInvNativeInvert": (NativeInvert, "Invert (native, exact)"),
    "VInvNativeReferenceAttention": (NativeReferenceAttention, "Reference Attention (native)"),
    "VInvNativeLoadTrajectory": (NativeLoadTrajectory, "Load Trajectory (native)"),
    "VInvNativeFlowEdit": (NativeFlowEdit, "FlowEdit (native)"),
}
NODE_CLASS_MAPPINGS = {key: guard(cls, name) for key, (cls, name) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {key: name for key, (_, name) in NODES.items()}
