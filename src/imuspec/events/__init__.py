"""Event cameras: one stream type, the file formats, EventGPT's rendering, dense representations, a video simulator."""

from .readers import FORMATS, Aedat4Recording, read_aedat4, read_events, read_h5, write_events
from .render import eventgpt_frames, eventgpt_pixel_values, histogram, time_surface, voxel_grid
from .simulator import EventSimulator, SimulatorConfig, frames_from_video, simulate
from .stream import EventError, EventStream

__all__ = [
    "FORMATS",
    "Aedat4Recording",
    "EventError",
    "EventSimulator",
    "EventStream",
    "SimulatorConfig",
    "eventgpt_frames",
    "eventgpt_pixel_values",
    "frames_from_video",
    "histogram",
    "read_aedat4",
    "read_events",
    "read_h5",
    "simulate",
    "time_surface",
    "voxel_grid",
    "write_events",
]
