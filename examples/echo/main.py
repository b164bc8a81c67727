# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "fastapi>=0.110",
#     "uvicorn>=0.29",
# ]
# ///
"""The original project's FastAPI echo: POST /echo/ answers the message and $HIDDEN_MESSAGE."""
import os

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Message(BaseModel):
    message: str


@app.get("/health")
def health():
    return "ok"


@app.post("/echo/")
def echo(msg: Message):
    return {"hidden_message": os.environ.get("HIDDEN_MESSAGE"), "received_message": msg.message}


if __name__ == "__main__":
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8000")))
