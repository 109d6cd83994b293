"""RoboTwin episodes in either of RoboTwin's layouts: discovery, reading, checking, writing.

    layout.py      where episodes live (both layouts under one root), instructions, working arm
    stable.py      the stable 2.0 layout: reader and writer
    xpolicylab.py  the current (XPolicyLab) layout: reader and writer
    cameras.py     camera matrices checked before anything is projected with them
    episode.py     what both layouts share: names, errors, the (state, action) contents

Both readers give the same `EpisodeArrays` for the same recording: T - 1 observation frames
with state = joint vector[t] and action = joint vector[t + 1], and the end poses of all T
frames. Every problem raises `EpisodeError`, which names the file, the key and the frame.
"""

from maniflow.robotwin.episode import (
    ARMS,
    CAMERAS,
    DEFAULT_CONFIG_NAMES,
    ENVS,
    ROBOTWIN_TCP_OFFSET,
    SINGLE_ARM_TASKS,
    TCP_OFFSET_ATTR,
    CameraMatrices,
    EpisodeArrays,
    EpisodeContents,
    EpisodeError,
    Instructions,
    decode_jpeg,
    encode_frames,
    frame_rate,
)
from maniflow.robotwin.layout import (
    LAYOUTS,
    EpisodeRef,
    SourceOptions,
    discover_episodes,
    open_episode,
    read_instructions,
    ref_for_file,
    scene_info_arm,
    scene_info_number,
    select_episodes,
)
from maniflow.robotwin.stable import KEYS, RoboTwinEpisode, write_robotwin_episode
from maniflow.robotwin.xpolicylab import CAMERA_NAMES, XKEYS, XPolicyLabEpisode, write_xpolicylab_episode

__all__ = [
    "ARMS", "CAMERAS", "CAMERA_NAMES", "DEFAULT_CONFIG_NAMES", "ENVS", "KEYS", "LAYOUTS", "ROBOTWIN_TCP_OFFSET",
    "SINGLE_ARM_TASKS", "TCP_OFFSET_ATTR", "XKEYS", "CameraMatrices", "EpisodeArrays", "EpisodeContents",
    "EpisodeError", "EpisodeRef", "Instructions", "RoboTwinEpisode", "SourceOptions", "XPolicyLabEpisode",
    "decode_jpeg", "discover_episodes", "encode_frames", "frame_rate", "open_episode", "read_instructions",
    "ref_for_file", "scene_info_arm", "scene_info_number",
    "select_episodes", "write_robotwin_episode", "write_xpolicylab_episode",
]
