/*
 * echod-bench's closed-loop (rr) hot path in C: an epoll loop that reads,
 * verifies, times and re-sends the echoes of the connections attached to it.
 *
 * Why: the Python worker spends ~14,000 instructions per echoed message
 * against ~120 in a minimal C client (callgrind, loadtest/README.md), so it
 * measured its own ceiling rather than the server's.  Only the per-message
 * path lives here; Python keeps connecting, idle connections, the other
 * workloads, the phases, stall detection and every decision about a failure.
 *
 * The rules are those of EchoConnection in workloads.py, which stays the
 * reference (and runs when this module is missing or ECHOD_BENCH_LOOP=python):
 *   - byte p of a connection's stream is pattern[(base + p) % PERIOD]; every
 *     byte received is compared (memcmp) against it, and more bytes than were
 *     sent is a mismatch however they look;
 *   - `depth` messages are in flight; each one echoed whole is timed from the
 *     moment it was released and the next one is released at once;
 *   - after stop_issuing() (the drain) nothing new is released.
 * On EOF, an error or a mismatch the connection is detached and its Python
 * callback is called with (code, messages done): code 0 is EOF, -1 a
 * mismatch, otherwise the errno.  Python fails the connection as it would have.
 *
 * Descriptors not attached carry a Python callback, called with the epoll
 * mask as EpollPoller does, so one loop serves both kinds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Must match loadtest/pattern.py. */
#define PERIOD 65537
#define CHUNK 65536
/* Latencies below this many µs are counted in an array; slower ones in a dict. */
#define LAT_SLOTS (1 << 17)
#define MAX_EVENTS 512

enum { FREE = 0, PYTHON, ATTACHED, DETACHED };

typedef struct {
    int fd;
    uint32_t events; /* the mask epoll holds for fd */
    Py_ssize_t size, depth;
    uint64_t base;
    uint64_t sent, target, received, done;
    int64_t *dues; /* ring of release times (ns) of messages in flight */
    Py_ssize_t due_head, due_count;
    PyObject *pattern; /* bytes, 2 * PERIOD long */
    PyObject *on_fail;
} Conn;

typedef struct {
    int kind;
    PyObject *callback; /* PYTHON */
    Conn *conn;         /* ATTACHED */
} Entry;

typedef struct {
    PyObject_HEAD
    int epfd;
    int draining;
    Entry *table;
    Py_ssize_t table_size;
    uint64_t messages, bytes;
    uint32_t *lat;
    int32_t *touched; /* slots of lat that are non-zero, in first-touched order */
    Py_ssize_t touched_count;
    PyObject *slow; /* dict µs -> count for latencies >= LAT_SLOTS */
    unsigned char buffer[CHUNK];
} Loop;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock on Linux */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static Entry *entry_for(Loop *self, int fd, int grow) {
    if (fd < 0)
        return NULL;
    if (fd >= self->table_size) {
        if (!grow)
            return NULL;
        Py_ssize_t size = self->table_size ? self->table_size : 1024;
        while (size <= fd)
            size *= 2;
        Entry *table = PyMem_Realloc(self->table, size * sizeof(Entry));
        if (table == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(table + self->table_size, 0, (size - self->table_size) * sizeof(Entry));
        self->table = table;
        self->table_size = size;
    }
    return &self->table[fd];
}

static void conn_free(Conn *c) {
    if (c == NULL)
        return;
    Py_XDECREF(c->pattern);
    Py_XDECREF(c->on_fail);
    PyMem_Free(c->dues);
    PyMem_Free(c);
}

/* Forget whatever fd carried, leaving epoll's registration as it is. */
static void entry_clear(Entry *e) {
    if (e->kind == PYTHON)
        Py_CLEAR(e->callback);
    else if (e->kind == ATTACHED)
        conn_free(e->conn);
    e->conn = NULL;
    e->kind = FREE;
}

static int set_events(Loop *self, Conn *c, uint32_t events) {
    if (c->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.fd = c->fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        return errno;
    c->events = events;
    return 0;
}

static void count_latency(Loop *self, int64_t ns) {
    int64_t us = ns / 1000;
    if (us < 0)
        us = 0;
    if (us < LAT_SLOTS) {
        if (self->lat[us]++ == 0)
            self->touched[self->touched_count++] = (int32_t)us;
        return;
    }
    /* Rare (over 131 ms): a Python dict, so no latency is ever clamped here. */
    PyObject *key = PyLong_FromLongLong(us);
    if (key == NULL)
        goto lost;
    PyObject *old = PyDict_GetItemWithError(self->slow, key);
    long long count = old ? PyLong_AsLongLong(old) + 1 : 1;
    PyObject *value = PyLong_FromLongLong(count);
    if (value == NULL || PyDict_SetItem(self->slow, key, value) < 0) {
        Py_XDECREF(value);
        Py_DECREF(key);
        goto lost;
    }
    Py_DECREF(value);
    Py_DECREF(key);
    return;
lost:
    /* Out of memory: the error surfaces from poll(), never a silent drop. */
    return;
}

/* Send what is released and unsent; ask for EPOLLOUT only while some is left.
 * Returns 0, or an errno for the connection's failure. */
static int flush(Loop *self, Conn *c) {
    const char *data = PyBytes_AS_STRING(c->pattern);
    while (c->sent < c->target) {
        uint64_t n = c->target - c->sent;
        if (n > CHUNK)
            n = CHUNK;
        ssize_t k = send(c->fd, data + (c->base + c->sent) % PERIOD, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            return errno;
        }
        c->sent += (uint64_t)k;
        if ((uint64_t)k < n)
            break;
    }
    return set_events(self, c, c->sent < c->target ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

/* Release `count` messages at time `now`. */
static void release(Conn *c, Py_ssize_t count, int64_t now) {
    for (Py_ssize_t i = 0; i < count; i++) {
        c->dues[(c->due_head + c->due_count) % c->depth] = now;
        c->due_count++;
    }
    c->target += (uint64_t)count * c->size;
}

/* One readable event: read, verify, time, release and send the next messages.
 * Returns 1 while the connection is fine; 0 when it failed, with *code 0 for
 * EOF, -1 for a mismatch, or the errno. */
static int receive(Loop *self, Conn *c, int *code) {
    ssize_t n;
    do {
        n = recv(c->fd, self->buffer, CHUNK, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 1;
        *code = errno;
        return 0;
    }
    if (n == 0) {
        *code = 0; /* closed */
        return 0;
    }
    const char *expected = PyBytes_AS_STRING(c->pattern) + (c->base + c->received) % PERIOD;
    if (c->received + (uint64_t)n > c->sent || memcmp(self->buffer, expected, (size_t)n) != 0) {
        *code = -1; /* mismatch */
        return 0;
    }
    c->received += (uint64_t)n;
    self->bytes += (uint64_t)n;
    uint64_t done = c->received / (uint64_t)c->size;
    Py_ssize_t completed = (Py_ssize_t)(done - c->done);
    if (completed == 0)
        return 1;
    int64_t now = now_ns();
    for (Py_ssize_t i = 0; i < completed; i++) {
        count_latency(self, now - c->dues[c->due_head]);
        c->due_head = (c->due_head + 1) % c->depth;
        c->due_count--;
    }
    self->messages += (uint64_t)completed;
    c->done = done;
    if (self->draining)
        return 1;
    release(c, completed, now);
    if (!(c->events & EPOLLOUT)) {
        int err = flush(self, c);
        if (err) {
            *code = err;
            return 0;
        }
    }
    return 1;
}

/* Detach a failed connection and tell Python; fd stays in epoll until unregister. */
static int fail(Loop *self, Entry *e, int code) {
    Conn *c = e->conn;
    PyObject *on_fail = c->on_fail;
    Py_INCREF(on_fail);
    unsigned long long done = c->done;
    conn_free(c);
    e->conn = NULL;
    e->kind = DETACHED;
    PyObject *result = PyObject_CallFunction(on_fail, "iK", code, done);
    Py_DECREF(on_fail);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Returns 0 while the connection is fine, 1 once it failed and Python was told
 * (the callback may have grown the table: `e` is stale then), -1 on an exception. */
static int on_attached(Loop *self, Entry *e, uint32_t events) {
    Conn *c = e->conn;
    int code = 0;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (!receive(self, c, &code))
            return fail(self, e, code) < 0 ? -1 : 1;
    }
    if ((events & EPOLLOUT) && (c->events & EPOLLOUT)) {
        int err = flush(self, c);
        if (err)
            return fail(self, e, err) < 0 ? -1 : 1;
    }
    return 0;
}

/* -- Python interface ------------------------------------------------------ */

static PyObject *Loop_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Loop *self = (Loop *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = -1;
    self->lat = PyMem_Calloc(LAT_SLOTS, sizeof(uint32_t));
    self->touched = PyMem_Malloc(LAT_SLOTS * sizeof(int32_t));
    self->slow = PyDict_New();
    if (self->lat == NULL || self->touched == NULL || self->slow == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Loop_dealloc(Loop *self) {
    for (Py_ssize_t i = 0; i < self->table_size; i++)
        entry_clear(&self->table[i]);
    PyMem_Free(self->table);
    PyMem_Free(self->lat);
    PyMem_Free(self->touched);
    Py_XDECREF(self->slow);
    if (self->epfd >= 0)
        close(self->epfd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Loop_register(Loop *self, PyObject *args) {
    int fd;
    unsigned int events;
    PyObject *callback;
    if (!PyArg_ParseTuple(args, "iIO:register", &fd, &events, &callback))
        return NULL;
    Entry *e = entry_for(self, fd, 1);
    if (e == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "bad fd %d", fd);
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    entry_clear(e);
    Py_INCREF(callback);
    e->callback = callback;
    e->kind = PYTHON;
    Py_RETURN_NONE;
}

static PyObject *Loop_modify(Loop *self, PyObject *args) {
    int fd;
    unsigned int events;
    PyObject *callback;
    if (!PyArg_ParseTuple(args, "iIO:modify", &fd, &events, &callback))
        return NULL;
    Entry *e = entry_for(self, fd, 0);
    if (e == NULL || e->kind == FREE)
        return PyErr_Format(PyExc_KeyError, "%d is not registered", fd);
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_INCREF(callback);
    entry_clear(e);
    e->callback = callback;
    e->kind = PYTHON;
    Py_RETURN_NONE;
}

static PyObject *Loop_unregister(Loop *self, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    Entry *e = entry_for(self, fd, 0);
    if (e == NULL || e->kind == FREE)
        return PyErr_Format(PyExc_KeyError, "%d is not registered", fd);
    entry_clear(e);
    if (epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Loop_attach(Loop *self, PyObject *args) {
    int fd;
    PyObject *pattern, *on_fail;
    unsigned long long base;
    Py_ssize_t size, depth;
    double now;
    if (!PyArg_ParseTuple(args, "iSKnndO:attach", &fd, &pattern, &base, &size, &depth, &now,
                          &on_fail))
        return NULL;
    if (PyBytes_GET_SIZE(pattern) != 2 * PERIOD || size < 1 || depth < 1)
        return PyErr_Format(PyExc_ValueError, "attach: bad pattern, size or depth");
    Entry *e = entry_for(self, fd, 0);
    if (e == NULL || e->kind == FREE)
        return PyErr_Format(PyExc_KeyError, "%d is not registered", fd);
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (c == NULL)
        return PyErr_NoMemory();
    c->dues = PyMem_Malloc(depth * sizeof(int64_t));
    if (c->dues == NULL) {
        PyMem_Free(c);
        return PyErr_NoMemory();
    }
    c->fd = fd;
    c->events = 0; /* unknown: the first set_events always writes */
    c->size = size;
    c->depth = depth;
    c->base = base % PERIOD;
    Py_INCREF(pattern);
    c->pattern = pattern;
    Py_INCREF(on_fail);
    c->on_fail = on_fail;
    entry_clear(e);
    e->conn = c;
    e->kind = ATTACHED;
    if (!self->draining)
        release(c, depth, (int64_t)(now * 1e9 + 0.5));
    int err = flush(self, c);
    if (err && fail(self, e, err) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Wait up to `timeout` seconds and handle what is ready.  Rounds in which only
 * attached connections were ready do not return to Python: the loop polls again
 * until the timeout is spent, so the worker's own loop runs once per timer, scan
 * or second rather than once per epoll_wait.  A round that ran any Python
 * callback returns at once, since the callback may have changed what the worker
 * waits for (a reconnect timer, say). */
static PyObject *Loop_poll(Loop *self, PyObject *arg) {
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    int64_t deadline = now_ns() + (int64_t)(timeout * 1e9);
    long total = 0;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int64_t left = deadline - now_ns();
        /* As select.epoll: whole milliseconds, rounded up. */
        int ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(self->epfd, events, MAX_EVENTS, ms);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno != EINTR)
                return PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_CheckSignals() < 0)
                return NULL;
            return PyLong_FromLong(total);
        }
        int called = 0;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            Entry *e = entry_for(self, fd, 0);
            if (e == NULL)
                continue;
            if (e->kind == ATTACHED) {
                int status = on_attached(self, e, events[i].events);
                if (status < 0)
                    return NULL;
                called |= status; /* it failed: Python was called */
            } else if (e->kind == PYTHON) {
                PyObject *callback = e->callback;
                Py_INCREF(callback); /* the callback may unregister itself */
                PyObject *result = PyObject_CallFunction(callback, "I", events[i].events);
                Py_DECREF(callback);
                if (result == NULL)
                    return NULL;
                Py_DECREF(result);
                called = 1;
            }
            /* FREE or DETACHED: closed or failed by an earlier callback of this round. */
        }
        if (PyErr_Occurred())
            return NULL;
        total += n;
        if (n == 0 || called || ms == 0)
            return PyLong_FromLong(total);
    }
}

static PyObject *Loop_take(Loop *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *latency = self->slow;
    self->slow = PyDict_New();
    if (self->slow == NULL) {
        self->slow = latency;
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->touched_count; i++) {
        int32_t us = self->touched[i];
        PyObject *key = PyLong_FromLong(us);
        PyObject *value = PyLong_FromUnsignedLong(self->lat[us]);
        if (key == NULL || value == NULL || PyDict_SetItem(latency, key, value) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(latency);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        self->lat[us] = 0;
    }
    self->touched_count = 0;
    PyObject *result = Py_BuildValue("KKN", (unsigned long long)self->messages,
                                     (unsigned long long)self->bytes, latency);
    self->messages = self->bytes = 0;
    return result;
}

static PyObject *Loop_progress(Loop *self, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    Entry *e = entry_for(self, fd, 0);
    if (e == NULL || e->kind != ATTACHED)
        return Py_BuildValue("(ii)", -1, -1);
    return Py_BuildValue("(KK)", (unsigned long long)e->conn->received,
                         (unsigned long long)e->conn->target);
}

static PyObject *Loop_stop_issuing(Loop *self, PyObject *Py_UNUSED(ignored)) {
    self->draining = 1;
    Py_RETURN_NONE;
}

static PyObject *Loop_close(Loop *self, PyObject *Py_UNUSED(ignored)) {
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Loop_methods[] = {
    {"register", (PyCFunction)Loop_register, METH_VARARGS,
     "register(fd, events, callback): callback(events) runs in Python."},
    {"modify", (PyCFunction)Loop_modify, METH_VARARGS,
     "modify(fd, events, callback): detaches fd if it was attached."},
    {"unregister", (PyCFunction)Loop_unregister, METH_O, "unregister(fd)"},
    {"attach", (PyCFunction)Loop_attach, METH_VARARGS,
     "attach(fd, pattern, base, size, depth, now, on_fail): run rr on fd in C."},
    {"poll", (PyCFunction)Loop_poll, METH_O,
     "poll(timeout_s) -> events handled; returns early once a Python callback ran."},
    {"take", (PyCFunction)Loop_take, METH_NOARGS,
     "take() -> (messages, bytes, {latency_us: count}) since the last take."},
    {"progress", (PyCFunction)Loop_progress, METH_O,
     "progress(fd) -> (received, target) bytes of an attached fd, (-1, -1) if not."},
    {"stop_issuing", (PyCFunction)Loop_stop_issuing, METH_NOARGS,
     "Release no new messages (the drain)."},
    {"close", (PyCFunction)Loop_close, METH_NOARGS, "Close the epoll descriptor."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "loadtest._rrloop.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "An epoll loop running closed-loop echo connections in C.",
    .tp_new = Loop_new,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rrloop", "echod-bench's rr hot path in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__rrloop(void) {
    if (PyType_Ready(&LoopType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "PERIOD", PERIOD) < 0 ||
        PyModule_AddIntConstant(m, "CHUNK", CHUNK) < 0)
        return NULL;
    return m;
}
