"""tuspy against Lectern: upload two chunks, drop the client, then resume with a new client
and uploader from the upload URL. Prints the upload URL when done.
Usage: python tuspy_client.py ENDPOINT TOKEN FILE"""
import sys

from tusclient import client

endpoint, token, path = sys.argv[1:4]
headers = {"Authorization": f"Bearer {token}"}
chunk = 3 * 1024 * 1024 + 5

first = client.TusClient(endpoint, headers=headers).uploader(
    path, chunk_size=chunk, metadata={"filename": "lecture.mp4", "title": "tuspy"}
)
first.upload_chunk()
first.upload_chunk()
url = first.url
del first

second = client.TusClient(endpoint, headers=headers).uploader(path, url=url, chunk_size=chunk)
assert second.offset > 0, "the new client resumes from the server's offset"
second.upload()
print(second.url)
