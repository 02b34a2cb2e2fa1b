"""A JSONL dropped into batches/ of the local stack's bucket yields its results file (S3 -> EventBridge)."""

import json
import time

import boto3


def test_a_batch_file_yields_one_result_line_per_input_line(stack):
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.aws_port}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    lines = [json.dumps({"custom_id": "kite", "body": {"model": "gpt-image-1", "prompt": "a red kite"}}),
             "{not json",
             json.dumps({"custom_id": "owl", "method": "POST", "url": "/v1/images/generations",
                         "body": {"model": "dall-e-3", "prompt": "an owl", "size": "1024x1792"}}),
             json.dumps({"custom_id": "bad-size", "body": {"model": "gpt-image-1", "prompt": "x", "size": "7x7"}})]
    s3.put_object(Bucket="imagegw-local-images", Key="batches/posters.jsonl", Body="\n".join(lines).encode())
    results = None
    for _ in range(120):
        time.sleep(0.5)
        try:
            body = s3.get_object(Bucket="imagegw-local-images", Key="results/posters.jsonl")["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
        results = [json.loads(line) for line in body.decode().splitlines()]
        break
    assert results is not None, "no results/posters.jsonl within 60 s"
    assert [r["custom_id"] for r in results] == ["kite", None, "owl", "bad-size"]
    assert [r["status"] for r in results] == ["succeeded", "failed", "succeeded", "failed"]
    assert results[2]["data"][0]["s3_uri"].startswith("s3://imagegw-local-images/images/")
    assert results[1]["error"]["message"] and results[3]["error"]["message"]
