"""`--target cpu` / `segedge tune`: the fastest correct CPU deployment on the machine at hand, chosen by measurement.

candidates.py builds the candidate deployments (runtime × precision / INT8 scheme × precision hint × threads),
measure.py measures their accuracy drop on labelled frames and times them on this CPU in rotating blocks,
select.py picks the fastest within the mIoU budget (pure: it runs on recorded figures), report.py writes the
candidate table and the latency-vs-drop plot.
"""
