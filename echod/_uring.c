/*
 * The io_uring ring of the `uring` backend: a thin layer over liburing.
 *
 * Python decides everything (echod/backends/uring.py and the serving core's
 * completion entry points); this file only prepares submission entries and
 * hands completions back.  What it keeps is the ring discipline, in one place:
 *
 *   - wait() submits what is queued, waits, then copies every completion's
 *     (user_data, res, flags) into a Python list before advancing the CQ head,
 *     once per batch.  It walks the CQ index by index (io_uring_for_each_cqe):
 *     a batch may wrap the ring, so entries are never treated as contiguous
 *     (the PyPI `liburing` binding did, and handed back zeroed completions).
 *   - the CQ ring is sized by the caller for its connections; `overflow`
 *     is the kernel's count of completions that did not fit (with
 *     IORING_FEAT_NODROP they wait in the kernel, but the count says the ring
 *     is too small).
 *   - receive buffers are per connection, in arenas mapped with MAP_NORESERVE:
 *     a slot costs address space, and memory only for the pages a connection's
 *     reads touch.
 *   - echo() sends from the received buffer (MSG_WAITALL: the kernel retries a
 *     short send itself) with its success completion skipped, linked to the
 *     next receive into the same buffer: one completion per echoed read, and
 *     the buffer is never overwritten before its bytes are sent.  A failed or
 *     short send does post a completion, and its linked receive is cancelled
 *     without one (REQ_F_SKIP_LINK_CQES).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

/* Slots per arena: 256 x 64 KiB = 16 MiB of address space each. */
#define ARENA_SLOTS 256

/* user_data = tag << 2 | op: which operation of which connection completed. */
enum { OP_RECEIVE = 0, OP_SEND = 1, OP_CANCEL = 2 };

typedef struct {
    PyObject_HEAD
    struct io_uring ring;
    int open;
    unsigned flags; /* setup flags that the kernel took */
    size_t slot_size;
    char **arenas;
    Py_ssize_t n_arenas;
} RingObject;

static PyObject *
raise_errno(int negative_errno)
{
    errno = -negative_errno;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static int
check_open(RingObject *self)
{
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "the ring is closed");
        return -1;
    }
    return 0;
}

/* A free submission entry, submitting what is queued if the SQ ring is full. */
static struct io_uring_sqe *
get_sqe(RingObject *self)
{
    struct io_uring_sqe *sqe;
    if (check_open(self) < 0)
        return NULL;
    sqe = io_uring_get_sqe(&self->ring);
    if (sqe == NULL) {
        int ret = io_uring_submit(&self->ring);
        if (ret < 0) {
            raise_errno(ret);
            return NULL;
        }
        sqe = io_uring_get_sqe(&self->ring);
        if (sqe == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "io_uring submission queue stays full");
            return NULL;
        }
    }
    return sqe;
}

static char *
slot_address(RingObject *self, Py_ssize_t slot)
{
    Py_ssize_t arena = slot / ARENA_SLOTS;
    if (slot < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffer slot");
        return NULL;
    }
    if (arena >= self->n_arenas) {
        Py_ssize_t n = arena + 1;
        char **grown = PyMem_Realloc(self->arenas, n * sizeof(char *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(grown + self->n_arenas, 0, (n - self->n_arenas) * sizeof(char *));
        self->arenas = grown;
        self->n_arenas = n;
    }
    if (self->arenas[arena] == NULL) {
        void *p = mmap(NULL, self->slot_size * ARENA_SLOTS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        self->arenas[arena] = p;
    }
    return self->arenas[arena] + (slot % ARENA_SLOTS) * self->slot_size;
}

static int
Ring_init(RingObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", "cq_entries", "slot_size", NULL};
    unsigned entries = 256, cq_entries = 0;
    Py_ssize_t slot_size = 65536;
    struct io_uring_params params;
    int ret;
    /* Tried in order: a ring that runs completions' work only when it waits
     * (DEFER_TASKRUN, 6.1) interrupts the loop least; older kernels refuse it. */
    static const unsigned attempts[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|IIn", kwlist, &entries, &cq_entries, &slot_size))
        return -1;
    if (self->open) {
        PyErr_SetString(PyExc_ValueError, "the ring is already set up");
        return -1;
    }
    if (slot_size < 1) {
        PyErr_SetString(PyExc_ValueError, "slot_size must be positive");
        return -1;
    }
    ret = -EINVAL;
    for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
        memset(&params, 0, sizeof(params));
        params.flags = attempts[i] | IORING_SETUP_CLAMP;
        if (cq_entries) {
            params.flags |= IORING_SETUP_CQSIZE;
            params.cq_entries = cq_entries;
        }
        ret = io_uring_queue_init_params(entries, &self->ring, &params);
        if (ret != -EINVAL)
            break;
    }
    if (ret < 0) {
        raise_errno(ret);
        return -1;
    }
    /* What the backend relies on: no lost completions (NODROP), waits with a
     * timeout that take no SQE (EXT_ARG), skipped success completions
     * (CQE_SKIP), and 6.0's multishot accept and cancel-all (LINKED_FILE
     * marks 6.0). */
    {
        unsigned need = IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG | IORING_FEAT_CQE_SKIP |
                        IORING_FEAT_LINKED_FILE;
        if ((params.features & need) != need) {
            io_uring_queue_exit(&self->ring);
            PyErr_Format(PyExc_OSError,
                         "this kernel's io_uring lacks features the backend needs "
                         "(has 0x%x, needs 0x%x: Linux 6.0 or later)",
                         params.features, need);
            return -1;
        }
    }
    self->flags = params.flags;
    self->slot_size = (size_t)slot_size;
    self->open = 1;
    return 0;
}

static void
release_arenas(RingObject *self)
{
    for (Py_ssize_t i = 0; i < self->n_arenas; i++)
        if (self->arenas[i] != NULL)
            munmap(self->arenas[i], self->slot_size * ARENA_SLOTS);
    PyMem_Free(self->arenas);
    self->arenas = NULL;
    self->n_arenas = 0;
}

static PyObject *
Ring_close(RingObject *self, PyObject *unused)
{
    if (self->open) {
        self->open = 0;
        /* Exiting the ring cancels what is in flight and waits for it, so the
         * arenas are unmapped only once the kernel is done with them. */
        io_uring_queue_exit(&self->ring);
        release_arenas(self);
    }
    Py_RETURN_NONE;
}

static void
Ring_dealloc(RingObject *self)
{
    Ring_close(self, NULL);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Ring_accept_multishot(RingObject *self, PyObject *args)
{
    int fd;
    unsigned long long user_data;
    struct io_uring_sqe *sqe;
    if (!PyArg_ParseTuple(args, "iK", &fd, &user_data))
        return NULL;
    if ((sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, user_data);
    Py_RETURN_NONE;
}

static PyObject *
Ring_poll_multishot(RingObject *self, PyObject *args)
{
    int fd;
    unsigned long long user_data;
    struct io_uring_sqe *sqe;
    if (!PyArg_ParseTuple(args, "iK", &fd, &user_data))
        return NULL;
    if ((sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_poll_multishot(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, user_data);
    Py_RETURN_NONE;
}

static PyObject *
Ring_poll_once(RingObject *self, PyObject *args)
{
    int fd;
    unsigned long long user_data;
    struct io_uring_sqe *sqe;
    if (!PyArg_ParseTuple(args, "iK", &fd, &user_data))
        return NULL;
    if ((sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, user_data);
    Py_RETURN_NONE;
}

/* Cancel every request whose user_data is `target` (its own completion is skipped). */
static PyObject *
Ring_cancel(RingObject *self, PyObject *args)
{
    unsigned long long target;
    struct io_uring_sqe *sqe;
    if (!PyArg_ParseTuple(args, "K", &target))
        return NULL;
    if ((sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_cancel64(sqe, target, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
    io_uring_sqe_set_data64(sqe, 0);
    Py_RETURN_NONE;
}

/* receive(fd, slot, tag): read into the connection's buffer. */
static PyObject *
Ring_receive(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t slot;
    unsigned long long tag;
    char *buffer;
    struct io_uring_sqe *sqe;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "receive(fd, slot, tag)");
        return NULL;
    }
    fd = PyLong_AsLong(args[0]);
    slot = PyLong_AsSsize_t(args[1]);
    tag = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if ((buffer = slot_address(self, slot)) == NULL || (sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_recv(sqe, fd, buffer, self->slot_size, 0);
    io_uring_sqe_set_data64(sqe, tag << 2 | OP_RECEIVE);
    Py_RETURN_NONE;
}

/* echo(fd, slot, tag, offset, length): send buffer[offset:offset + length],
 * then (linked) receive into the buffer again. */
static PyObject *
Ring_echo(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t slot, offset, length;
    unsigned long long tag;
    char *buffer;
    struct io_uring_sqe *send, *receive;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "echo(fd, slot, tag, offset, length)");
        return NULL;
    }
    fd = PyLong_AsLong(args[0]);
    slot = PyLong_AsSsize_t(args[1]);
    tag = PyLong_AsUnsignedLongLong(args[2]);
    offset = PyLong_AsSsize_t(args[3]);
    length = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (offset < 0 || length < 1 || (size_t)(offset + length) > self->slot_size) {
        PyErr_SetString(PyExc_ValueError, "echo outside the buffer");
        return NULL;
    }
    if ((buffer = slot_address(self, slot)) == NULL)
        return NULL;
    /* Both entries or neither: a lone linked send would link to whatever comes next. */
    if (io_uring_sq_space_left(&self->ring) < 2) {
        int ret = io_uring_submit(&self->ring);
        if (ret < 0)
            return raise_errno(ret);
    }
    if ((send = get_sqe(self)) == NULL || (receive = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_send(send, fd, buffer + offset, length, MSG_WAITALL | MSG_NOSIGNAL);
    io_uring_sqe_set_flags(send, IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS);
    io_uring_sqe_set_data64(send, tag << 2 | OP_SEND);
    io_uring_prep_recv(receive, fd, buffer, self->slot_size, 0);
    io_uring_sqe_set_data64(receive, tag << 2 | OP_RECEIVE);
    Py_RETURN_NONE;
}

/* cancel_fd(fd, tag): cancel every request on fd, submitted at once so the
 * caller may close fd right after; completes with user_data tag << 2 | OP_CANCEL. */
static PyObject *
Ring_cancel_fd(RingObject *self, PyObject *args)
{
    int fd, ret;
    unsigned long long tag;
    struct io_uring_sqe *sqe;
    if (!PyArg_ParseTuple(args, "iK", &fd, &tag))
        return NULL;
    if ((sqe = get_sqe(self)) == NULL)
        return NULL;
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, tag << 2 | OP_CANCEL);
    ret = io_uring_submit(&self->ring);
    if (ret < 0)
        return raise_errno(ret);
    Py_RETURN_NONE;
}

/* wait(timeout): submit, wait up to timeout seconds (< 0: no limit, 0: do not
 * wait) for a completion, and return every completion there is as a list of
 * (user_data, res, flags). */
static PyObject *
Ring_wait(RingObject *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    struct io_uring_cqe *cqe;
    unsigned head, count = 0, ready;
    PyObject *result;
    int ret;

    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (timeout < 0) {
        ret = io_uring_submit_and_wait(&self->ring, 1);
    } else {
        struct __kernel_timespec ts;
        ts.tv_sec = (long long)timeout;
        ts.tv_nsec = (long long)((timeout - (double)ts.tv_sec) * 1e9);
        ret = io_uring_submit_and_wait_timeout(&self->ring, &cqe, 1, &ts, NULL);
    }
    Py_END_ALLOW_THREADS
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        return raise_errno(ret);
    ready = io_uring_cq_ready(&self->ring);
    result = PyList_New(ready);
    if (result == NULL)
        return NULL;
    io_uring_for_each_cqe(&self->ring, head, cqe)
    {
        PyObject *item;
        if (count == ready)
            break;
        item = Py_BuildValue("(KiI)", (unsigned long long)cqe->user_data, cqe->res, cqe->flags);
        if (item == NULL) {
            Py_DECREF(result);
            return NULL; /* the entries stay in the ring for the next wait */
        }
        PyList_SET_ITEM(result, count, item);
        count++;
    }
    io_uring_cq_advance(&self->ring, count);
    return result;
}

static PyObject *
Ring_get_overflow(RingObject *self, void *closure)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(*self->ring.cq.koverflow);
}

static PyObject *
Ring_get_cq_entries(RingObject *self, void *closure)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(self->ring.cq.ring_entries);
}

static PyObject *
Ring_get_sq_entries(RingObject *self, void *closure)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(self->ring.sq.ring_entries);
}

static PyObject *
Ring_get_setup_flags(RingObject *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->flags);
}

static PyMethodDef Ring_methods[] = {
    {"accept_multishot", (PyCFunction)Ring_accept_multishot, METH_VARARGS, NULL},
    {"poll_multishot", (PyCFunction)Ring_poll_multishot, METH_VARARGS, NULL},
    {"poll_once", (PyCFunction)Ring_poll_once, METH_VARARGS, NULL},
    {"cancel", (PyCFunction)Ring_cancel, METH_VARARGS, NULL},
    {"receive", (PyCFunction)(void (*)(void))Ring_receive, METH_FASTCALL, NULL},
    {"echo", (PyCFunction)(void (*)(void))Ring_echo, METH_FASTCALL, NULL},
    {"cancel_fd", (PyCFunction)Ring_cancel_fd, METH_VARARGS, NULL},
    {"wait", (PyCFunction)Ring_wait, METH_O, NULL},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"overflow", (getter)Ring_get_overflow, NULL, NULL, NULL},
    {"cq_entries", (getter)Ring_get_cq_entries, NULL, NULL, NULL},
    {"sq_entries", (getter)Ring_get_sq_entries, NULL, NULL, NULL},
    {"setup_flags", (getter)Ring_get_setup_flags, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "echod._uring.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_doc = "An io_uring with per-connection receive buffers.",
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "echod._uring", "io_uring for echod's uring backend (liburing).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__uring(void)
{
    PyObject *m;
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "OP_RECEIVE", OP_RECEIVE);
    PyModule_AddIntConstant(m, "OP_SEND", OP_SEND);
    PyModule_AddIntConstant(m, "OP_CANCEL", OP_CANCEL);
    PyModule_AddIntConstant(m, "CQE_F_MORE", IORING_CQE_F_MORE);
    return m;
}
