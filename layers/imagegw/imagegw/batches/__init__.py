"""Batch jobs from S3: `batches/<name>.jsonl` in the image bucket -> one task per line -> `results/<name>.jsonl`.

    jobs     what the submit function calls: an S3 "Object Created" event, and "Batch Continue"
    jobs     the submit function's entry points: the S3 event that starts a batch, "Batch Continue"
    reader   the S3 event, the streamed read of the object (a lease, checkpoints, the hand-over to a next run),
             and one task per line (a bad line becomes a failed task, so it still gets its result line)
    record   the batch's record in the task table (how far it is read, how many of its tasks ended, its
             leases) and what the sweep asks of it
    results  the results file, one line per input line in input order, written once, streamed

A run reads from the saved offset until the object ends (then the record holds its `total`) or its share of
lines or time is used (then it hands over with "Batch Continue"). Every task that ends is counted on its
record (`lifecycle` calls `record.task_ended`); after the last, "Batch Continue" asks the submit function (it
may write the bucket) to write the results. Nothing is lost: until its results are written a batch sits in
the sweep index, and the sweep's "Batch Continue" (`check`) takes over a reader whose lease ran out (or
whose hand-over was lost) and recounts a batch whose count fell behind, then finishes it.

This file imports nothing: `lifecycle` counts an ended task on its batch's record (`record.task_ended`)
without loading the reader, which itself hands bad lines to `lifecycle`, so no import cycle forms.
"""
