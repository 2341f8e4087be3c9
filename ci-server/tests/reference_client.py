"""A minimal client that talks to the server the way the reference
implementation's Python client (`ci_client/client.py` of mkjt2/ci-system) does:
`requests`, the project zip in the multipart field `file` as
("project.zip", bytes, "application/zip"), the key in an
`Authorization: Bearer` header, and event streams read line by line, keeping
the `data: ` lines only.

Written for this project's compatibility test (tests/reference_client.rs),
which starts the server, plays the controller, and checks what this prints:
one JSON object per line, `{"step": ...}`.

Usage: reference_client.py SERVER_URL API_KEY
"""

import io
import json
import sys
import uuid
import zipfile

import requests

TIMEOUT = 30


def report(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def project_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("test_sample.py", "def test_ok():\n    assert True\n")
        archive.writestr("requirements.txt", "")
    return buffer.getvalue()


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def upload(server, key, path, stream):
    response = requests.post(
        f"{server}{path}",
        files={"file": ("project.zip", project_zip(), "application/zip")},
        headers=auth(key),
        stream=stream,
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response


def data_lines(response):
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            yield json.loads(line[6:])


def wait_for_job(server, key, job_id, from_beginning):
    params = {"from_beginning": from_beginning} if from_beginning else {}
    response = requests.get(
        f"{server}/jobs/{job_id}/stream",
        params=params,
        headers=auth(key),
        stream=True,
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return list(data_lines(response))


def main():
    server, key = sys.argv[1], sys.argv[2]

    # `ci submit test`: the job id comes first, then the output as it happens.
    events = []
    for event in data_lines(upload(server, key, "/submit-stream", stream=True)):
        events.append(event)
        if event["type"] == "job_id":
            report("submitted", job_id=event["job_id"])
    report("submit_stream", events=events)

    # `ci submit test --async`, then `ci wait --all`.
    job_id = upload(server, key, "/submit-async", stream=False).json()["job_id"]
    report("submitted_async", job_id=job_id)
    report("wait_all", events=wait_for_job(server, key, job_id, True))

    # `ci wait` on a job that has ended.
    report("wait_ended", events=wait_for_job(server, key, job_id, False))

    # `ci list --json`.
    response = requests.get(f"{server}/jobs", headers=auth(key), timeout=TIMEOUT)
    response.raise_for_status()
    report("jobs", jobs=response.json())

    # What the reference client shows on errors: status and detail.
    for name, path, headers in [
        ("bad_key", "/jobs", auth("ci_" + "x" * 40)),
        ("no_key", "/jobs", {}),
        ("unknown_job", f"/jobs/{uuid.uuid4()}", auth(key)),
    ]:
        response = requests.get(f"{server}{path}", headers=headers, timeout=TIMEOUT)
        report(name, status=response.status_code, body=response.json())

    report("done")


if __name__ == "__main__":
    main()
