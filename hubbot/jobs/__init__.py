"""The job service: a persistent queue of merges, run by worker processes, triggered by people
(UI, CLI, API), by the Hub (webhooks, discussions) or by the clock (watches, schedules).

`service.Service` is the interface; `store` holds the state; `supervisor` and `worker` run
merges; `scheduler` drives them; `webhooks` answers the Hub.
"""
