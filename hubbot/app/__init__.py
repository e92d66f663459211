"""The web app: the FastAPI server (JSON API, webhooks), the Gradio UI, what it shows, and the
community recipe gallery."""
