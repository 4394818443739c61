"""Camera and video pipeline: sources and sinks by URI, views, and a pipelined stream (`segedge run`).

    from segedge.video import Pipeline, run_stream
    with Pipeline("exports/b0-384x512", "clip.mp4", outputs=["out.mp4"]) as p:
        print(p.run()["fps"])
    for result in run_stream(segmenter, 0, max_frames=100):    # camera 0, latest-frame policy
        result.labels, result.overlay, result.latency_ms

Modules by stage: sources.py (capture), views.py (render), sinks.py (write), stats.py (counters, timings,
latency), pipeline.py (threads and queues). Only numpy, OpenCV, rich and the standard library are imported: this
package runs on devices without torch.
"""

from __future__ import annotations

from .pipeline import POLICIES, BoundedQueue, Pipeline, Result, run_stream, stop_on_signals
from .sinks import DisplaySink, FolderSink, ImageSink, NullSink, Sink, VideoSink, open_sink
from .sources import (Frame, ImageSource, ReconnectingSource, Source, SourceLost, SourceOptions, SyntheticSource,
                      csi_pipeline, has_gstreamer, open_source)
from .stats import PipelineStats, Reservoir
from .views import VIEWS, Renderer

__all__ = ["BoundedQueue", "DisplaySink", "FolderSink", "Frame", "ImageSink", "ImageSource", "NullSink", "POLICIES",
           "Pipeline", "PipelineStats", "ReconnectingSource", "Renderer", "Reservoir", "Result", "Sink", "Source",
           "SourceLost", "SourceOptions", "SyntheticSource", "VIEWS", "VideoSink", "csi_pipeline", "has_gstreamer",
           "open_sink", "open_source", "run_stream", "stop_on_signals"]
