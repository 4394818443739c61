"""TensorRT engines: the device bundle an export leaves (bundle.py) and the build that runs on the device (build.py).

Torch-free: a Jetson with JetPack's TensorRT and `pip install 'segedge[ort,trt]'` builds and checks engines.
"""
