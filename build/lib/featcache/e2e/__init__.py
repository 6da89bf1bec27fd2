"""End to end: both backbones and a stage-2 fusion head trained together on images and captions.

    config       E2EConfig: what a run trains (validated in one place)
    distributed  one process or a torchrun rank: device, threads, gather / broadcast
    model        E2EModel (encoders -> stage 2's HeadNet), built fresh or from a fitted head
    batches      records -> batches through featcache.encoders.loader; logits for every row
    checkpoints  checkpoints/epoch-N/: written atomically, read back without running code
    rundir       the run directory's files: config.json, tables and plots, final results
    loop         train(): the epoch loop, resumable
    predict      a finished run's model and probabilities (featcache.runs.kinds makes them a run's predictions)
"""
