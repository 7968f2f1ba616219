/* The cold path of routing over a deck's mapped columns, in one call each (agent/pricing/deck.py, routing.py).

   `Columns(codes, first, bucket, parent, length, offsets, source, chain_offsets, chain, chain_depth)` holds
   buffers of the deck's columns (memoryviews of its map; `codes`/`first` None for a deck whose number keys
   have no codes, `length` None for one whose keys' lengths are in their codes) and answers:

   * `walk(number)`: the slot of the longest number key `number` starts with, -1 when none: what
     deck._walk does in Python (the definition; tests/pricing compare both);
   * `route(usable, carriers, longest, offers, number)`: routing._route_columns_python's work: the first rate
     of an eligible source along the prefix chain of slot `longest`, made a `Rate` as deck.Deck.rate(...,
     routed=True) makes it (`prices` gives what it is made of), and, when `offers` is true, the offers (a
     tuple of `carriers` items): (price or None, offers).

   Every index read from a column is checked against the column it indexes: a damaged deck raises
   ValueError, it never reads outside its map. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define CODED 17 /* digits of a number key's code (deck._CODED) */

typedef struct {
    Py_buffer view;
    Py_ssize_t count;
    int width; /* bytes per item: 1, 2, 4 or 8 */
    int is_signed;
} Column;

#define FIELDS 21   /* Rate's slots, in deck._RATE_FIELDS order */
#define TARIFF 16   /* integers per tariff row (deck._TARIFF_COLUMNS) */

typedef struct {
    PyObject_HEAD
    Column codes, first, parent, length, offsets, source, chain_offsets, chain, chain_depth;
    int coded, has_length;
    uint64_t bucket;
    /* what the price's Rate is made of (`prices`): NULL until given */
    PyTypeObject *rate_type;
    Py_ssize_t offset[FIELDS];
    PyObject *tenant, *sources, *forms, *zones, *roundings, *texts, *restore, *text_of, *empty;
    Column tariff, description, form, tariffs;
} Columns;

static const uint64_t SPANS[CODED + 1] = {
    100000000000000000ULL, 10000000000000000ULL, 1000000000000000ULL, 100000000000000ULL, 10000000000000ULL,
    1000000000000ULL, 100000000000ULL, 10000000000ULL, 1000000000ULL, 100000000ULL, 10000000ULL, 1000000ULL,
    100000ULL, 10000ULL, 1000ULL, 100ULL, 10ULL, 1ULL};

static inline uint64_t span_of(uint64_t length) { return length <= CODED ? SPANS[length] : 1; }

static int column_open(Column *column, PyObject *object, const char *name) {
    memset(column, 0, sizeof(*column));
    if (object == Py_None)
        return 0;
    if (PyObject_GetBuffer(object, &column->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    const char *format = column->view.format ? column->view.format : "B";
    if (format[0] == '@' || format[0] == '=' || format[0] == '<')
        format++;
    int width, is_signed;
    switch (format[0]) {
    case 'B': width = 1; is_signed = 0; break;
    case 'H': width = 2; is_signed = 0; break;
    case 'I': width = 4; is_signed = 0; break;
    case 'i': width = 4; is_signed = 1; break;
    case 'Q': width = 8; is_signed = 0; break;
    case 'q': width = 8; is_signed = 1; break;
    default: width = 0; is_signed = 0;
    }
    if (!width || format[1] || column->view.itemsize != width) {
        PyBuffer_Release(&column->view);
        memset(column, 0, sizeof(*column));
        PyErr_Format(PyExc_ValueError, "column %s: unsupported format %s", name, format);
        return -1;
    }
    column->width = width;
    column->is_signed = is_signed;
    column->count = column->view.len / width;
    return 0;
}

static inline int64_t item(const Column *column, Py_ssize_t i) {
    const char *at = (const char *)column->view.buf;
    switch (column->width) {
    case 1: return ((const uint8_t *)at)[i];
    case 2: return ((const uint16_t *)at)[i];
    case 4: return column->is_signed ? (int64_t)((const int32_t *)at)[i] : (int64_t)((const uint32_t *)at)[i];
    default: return (int64_t)((const uint64_t *)at)[i];
    }
}

static PyObject *damaged(const char *what) {
    PyErr_Format(PyExc_ValueError, "deck columns inconsistent: %s", what);
    return NULL;
}

static void Columns_dealloc(Columns *self) {
    Column *all[] = {&self->codes, &self->first, &self->parent, &self->length, &self->offsets, &self->source,
                     &self->chain_offsets, &self->chain, &self->chain_depth, &self->tariff, &self->description,
                     &self->form, &self->tariffs};
    for (size_t n = 0; n < sizeof(all) / sizeof(all[0]); n++)
        if (all[n]->view.obj)
            PyBuffer_Release(&all[n]->view);
    Py_XDECREF(self->rate_type);
    Py_XDECREF(self->tenant);
    Py_XDECREF(self->sources);
    Py_XDECREF(self->forms);
    Py_XDECREF(self->zones);
    Py_XDECREF(self->roundings);
    Py_XDECREF(self->texts);
    Py_XDECREF(self->restore);
    Py_XDECREF(self->text_of);
    Py_XDECREF(self->empty);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* prices(rate_type, fields, tenant, sources, forms, zones, roundings, texts, restore, text_of, tariff,
   description, form, tariffs): what `route` makes the price's Rate of, as deck.Deck.rate(..., routed=True)
   does: `fields` are the type's slots in deck._RATE_FIELDS order (set at their offsets, as a fresh
   object's), `texts` the deck's memo of descriptions, filled by `text_of(texts, restore, d)` on a miss. */
static PyObject *Columns_prices(Columns *self, PyObject *args) {
    PyObject *type, *fields, *tenant, *sources, *forms, *zones, *roundings, *texts, *restore, *text_of;
    PyObject *tariff, *description, *form, *tariffs;
    if (!PyArg_ParseTuple(args, "O!O!UO!O!O!O!O!OOOOOO:prices", &PyType_Type, &type, &PyTuple_Type, &fields, &tenant,
                          &PyList_Type, &sources, &PyList_Type, &forms, &PyList_Type, &zones, &PyTuple_Type,
                          &roundings, &PyDict_Type, &texts, &restore, &text_of, &tariff, &description, &form,
                          &tariffs))
        return NULL;
    if (self->rate_type)
        return PyErr_Format(PyExc_TypeError, "prices() is given once");
    PyTypeObject *rate_type = (PyTypeObject *)type;
    if (PyTuple_GET_SIZE(fields) != FIELDS)
        return PyErr_Format(PyExc_ValueError, "prices(): %d fields expected", FIELDS);
    for (Py_ssize_t n = 0; n < FIELDS; n++) {
        const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(fields, n));
        if (!name)
            return NULL;
        self->offset[n] = -1;
        for (PyMemberDef *member = rate_type->tp_members; member && member->name; member++)
            if (!strcmp(member->name, name) && member->type == T_OBJECT_EX && !(member->flags & READONLY) &&
                member->offset > 0 && member->offset + (Py_ssize_t)sizeof(PyObject *) <= rate_type->tp_basicsize)
                self->offset[n] = member->offset;
        if (self->offset[n] < 0)
            return PyErr_Format(PyExc_ValueError, "prices(): %s is not a slot of %s", name, rate_type->tp_name);
    }
    if (rate_type->tp_itemsize || rate_type->tp_dictoffset)
        return PyErr_Format(PyExc_ValueError, "prices(): %s has a dict or items", rate_type->tp_name);
    if (column_open(&self->tariff, tariff, "tariff") < 0 || column_open(&self->description, description, "description") < 0 ||
        column_open(&self->form, form, "form") < 0 || column_open(&self->tariffs, tariffs, "tariffs") < 0)
        return NULL;
    if (!self->tariff.view.obj || !self->description.view.obj || !self->form.view.obj || !self->tariffs.view.obj ||
        self->tariffs.width != 8 || self->tariff.count != self->source.count ||
        self->description.count != self->source.count || self->form.count != self->source.count)
        return damaged("the rates' columns");
    self->empty = PyUnicode_FromString("");
    if (!self->empty)
        return NULL;
    Py_INCREF(type);
    self->rate_type = rate_type;
    Py_INCREF(tenant);
    self->tenant = tenant;
    Py_INCREF(sources);
    self->sources = sources;
    Py_INCREF(forms);
    self->forms = forms;
    Py_INCREF(zones);
    self->zones = zones;
    Py_INCREF(roundings);
    self->roundings = roundings;
    Py_INCREF(texts);
    self->texts = texts;
    Py_INCREF(restore);
    self->restore = restore;
    Py_INCREF(text_of);
    self->text_of = text_of;
    Py_RETURN_NONE;
}

static inline PyObject *item_of(PyObject *list, int64_t n, const char *what) {
    if (n < 0 || n >= PyList_GET_SIZE(list)) {
        damaged(what);
        return NULL;
    }
    return PyList_GET_ITEM(list, n);
}

/* Rate `i` (of `source`, its key `key`) as Deck.rate(i, key, source, routed=True) makes it: a new reference. */
static PyObject *make_rate(Columns *self, Py_ssize_t i, PyObject *key, Py_ssize_t source) {
    int64_t t = item(&self->tariff, i);
    if (t < 0 || (t + 1) * TARIFF > self->tariffs.count)
        return damaged("tariff");
    const int64_t *row = (const int64_t *)self->tariffs.view.buf + t * TARIFF;
    PyObject *pair = item_of(self->sources, source, "source"), *form = item_of(self->forms, item(&self->form, i), "form");
    PyObject *zone = item_of(self->zones, row[15], "zone");
    if (!pair || !form || !zone)
        return NULL;
    if (row[10] < 0 || row[10] >= PyTuple_GET_SIZE(self->roundings))
        return damaged("rounding");
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyTuple_Check(form) || PyTuple_GET_SIZE(form) != 2)
        return damaged("sources or forms");
    PyObject *values[FIELDS] = {NULL};
    int64_t d = item(&self->description, i);
    if (d) {
        PyObject *number = PyLong_FromLongLong(d);
        if (!number)
            return NULL;
        PyObject *text = PyDict_GetItemWithError(self->texts, number);
        if (text)
            Py_INCREF(text);
        else if (!PyErr_Occurred())
            text = PyObject_CallFunctionObjArgs(self->text_of, self->texts, self->restore, number, NULL);
        Py_DECREF(number);
        if (!text)
            return NULL;
        values[8] = text;
    } else {
        values[8] = Py_NewRef(Py_None);
    }
    int follows = PyObject_IsTrue(PyTuple_GET_ITEM(form, 1));
    if (follows < 0)
        goto failed;
    values[3] = follows ? PyUnicode_Concat(PyTuple_GET_ITEM(form, 0), key) : Py_NewRef(PyTuple_GET_ITEM(form, 0));
    values[0] = Py_NewRef(self->tenant);
    values[1] = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
    values[2] = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
    values[4] = PyLong_FromLongLong(row[0]);
    values[5] = PyLong_FromLongLong(row[1]);
    values[6] = PyLong_FromLongLong(row[2]);
    values[7] = PyLong_FromLongLong(row[3]);
    values[9] = Py_NewRef(Py_None);
    values[10] = Py_NewRef(Py_None);
    values[11] = row[6] == -1 ? Py_NewRef(Py_None) : PyLong_FromLongLong(row[6]);
    values[12] = PyLong_FromLongLong(row[7]);
    values[13] = row[8] == -1 ? Py_NewRef(Py_None) : PyLong_FromLongLong(row[8]);
    values[14] = PyLong_FromLongLong(row[9]);
    values[15] = Py_NewRef(PyTuple_GET_ITEM(self->roundings, row[10]));
    values[16] = Py_NewRef(self->empty);
    values[17] = PyLong_FromLong(0);
    values[18] = Py_NewRef(Py_None);
    values[19] = Py_NewRef(Py_None);
    values[20] = Py_NewRef(zone);
    for (int n = 0; n < FIELDS; n++)
        if (!values[n])
            goto failed;
    PyObject *rate = self->rate_type->tp_alloc(self->rate_type, 0);
    if (!rate)
        goto failed;
    for (int n = 0; n < FIELDS; n++)
        *(PyObject **)((char *)rate + self->offset[n]) = values[n];
    return rate;
failed:
    for (int n = 0; n < FIELDS; n++)
        Py_XDECREF(values[n]);
    return NULL;
}

static int Columns_init(Columns *self, PyObject *args, PyObject *kwargs) {
    PyObject *codes, *first, *bucket, *parent, *length, *offsets, *source, *chain_offsets, *chain, *chain_depth;
    static char *names[] = {"codes", "first", "bucket", "parent", "length", "offsets", "source", "chain_offsets",
                            "chain", "chain_depth", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOO:Columns", names, &codes, &first, &bucket, &parent,
                                     &length, &offsets, &source, &chain_offsets, &chain, &chain_depth))
        return -1;
    if (self->offsets.view.obj) {
        PyErr_SetString(PyExc_TypeError, "Columns is initialized once");
        return -1;
    }
    if (column_open(&self->codes, codes, "codes") < 0 || column_open(&self->first, first, "first") < 0 ||
        column_open(&self->parent, parent, "parent") < 0 || column_open(&self->length, length, "length") < 0 ||
        column_open(&self->offsets, offsets, "offsets") < 0 || column_open(&self->source, source, "source") < 0 ||
        column_open(&self->chain_offsets, chain_offsets, "chain_offsets") < 0 ||
        column_open(&self->chain, chain, "chain") < 0 || column_open(&self->chain_depth, chain_depth, "chain_depth") < 0)
        return -1;
    self->coded = self->codes.view.obj != NULL;
    self->has_length = self->length.view.obj != NULL;
    if (self->coded) {
        if (!self->first.view.obj || self->codes.width != 8 || self->first.count < 1) {
            PyErr_SetString(PyExc_ValueError, "codes need first");
            return -1;
        }
        unsigned long long b = PyLong_AsUnsignedLongLong(bucket);
        if (PyErr_Occurred())
            return -1;
        if (b == 0) {
            PyErr_SetString(PyExc_ValueError, "bucket must be positive");
            return -1;
        }
        self->bucket = b;
    }
    if (!self->coded && !self->has_length) {
        PyErr_SetString(PyExc_ValueError, "a deck without codes needs its keys' lengths");
        return -1;
    }
    if (!self->parent.view.obj || !self->offsets.view.obj || !self->source.view.obj ||
        !self->chain_offsets.view.obj || !self->chain.view.obj || !self->chain_depth.view.obj) {
        PyErr_SetString(PyExc_ValueError, "a column is missing");
        return -1;
    }
    if ((self->coded && self->codes.count != self->parent.count) ||
        (self->has_length && self->length.count != self->parent.count) ||
        self->offsets.count < self->parent.count + 1 || self->chain_offsets.count < self->parent.count + 1 ||
        self->chain.count != self->chain_depth.count) {
        PyErr_SetString(PyExc_ValueError, "the columns' lengths disagree");
        return -1;
    }
    return 0;
}

/* The slot of the longest key the number (its leading ASCII digits, at most CODED of them) starts with. */
static PyObject *Columns_walk(Columns *self, PyObject *number) {
    if (!PyUnicode_Check(number))
        return PyErr_Format(PyExc_TypeError, "walk() takes a str");
    if (!self->coded)
        return PyErr_Format(PyExc_TypeError, "walk() needs a deck with codes");
    Py_ssize_t size = PyUnicode_GET_LENGTH(number);
    int kind = PyUnicode_KIND(number);
    const void *data = PyUnicode_DATA(number);
    uint64_t value = 0;
    Py_ssize_t digits = 0;
    while (digits < size && digits < CODED) {
        Py_UCS4 c = PyUnicode_READ(kind, data, digits);
        if (c < '0' || c > '9')
            break;
        value = value * 10 + (c - '0');
        digits++;
    }
    const Column *codes = &self->codes;
    if (!digits) /* only the key "" can match: code 0 */
        return PyLong_FromLong(codes->count && item(codes, 0) == 0 ? 0 : -1);
    value *= SPANS[digits];
    uint64_t bucket = value / self->bucket;
    if ((Py_ssize_t)bucket + 1 >= self->first.count)
        return damaged("bucket beyond first");
    Py_ssize_t low = (Py_ssize_t)item(&self->first, (Py_ssize_t)bucket);
    Py_ssize_t high = (Py_ssize_t)item(&self->first, (Py_ssize_t)bucket + 1);
    if (low > high || high > codes->count)
        return damaged("first");
    const uint64_t *code = (const uint64_t *)codes->view.buf;
    uint64_t wanted = value * 32 + (uint64_t)digits;
    while (low < high) { /* bisect_right */
        Py_ssize_t middle = low + (high - low) / 2;
        if (wanted < code[middle])
            high = middle;
        else
            low = middle + 1;
    }
    Py_ssize_t i = low - 1;
    for (int steps = 0; i >= 0; steps++) {
        uint64_t found = code[i];
        if (value - (found >> 5) < span_of(found & 31)) /* unsigned: a key above the number fails too */
            return PyLong_FromSsize_t(i);
        if (steps > CODED + 1) /* a key has at most CODED prefix keys: a cycle */
            return damaged("parent");
        i = (Py_ssize_t)item(&self->parent, i);
        if (i >= codes->count)
            return damaged("parent");
    }
    return PyLong_FromLong(-1);
}

static inline int usable_of(PyObject *usable, Py_ssize_t source, long *carrier) {
    if (source >= PyList_GET_SIZE(usable)) {
        damaged("a source beyond the profile's");
        return -1;
    }
    long value = PyLong_AsLong(PyList_GET_ITEM(usable, source));
    if (value == -1 && PyErr_Occurred())
        return -1;
    *carrier = value;
    return 0;
}

/* route(usable, carriers, longest, offers, number) -> (price, offers): the price a Rate (or None), the offers
   a tuple of `carriers` items (() unless asked, or without a price) */
static PyObject *Columns_route(Columns *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "route() takes 5 arguments");
    if (!self->rate_type)
        return PyErr_Format(PyExc_TypeError, "route() needs prices() first");
    if (!PyUnicode_Check(args[4]))
        return PyErr_Format(PyExc_TypeError, "route(): the number is a str");
    PyObject *usable = args[0], *carriers = args[1];
    if (!PyList_Check(usable) || !PyList_Check(carriers))
        return PyErr_Format(PyExc_TypeError, "route(): usable and carriers are lists");
    Py_ssize_t longest = PyLong_AsSsize_t(args[2]);
    if (longest == -1 && PyErr_Occurred())
        return NULL;
    int offers = PyObject_IsTrue(args[3]);
    if (offers < 0)
        return NULL;
    Py_ssize_t slots = self->parent.count;
    if (longest < 0 || longest >= slots)
        return PyErr_Format(PyExc_IndexError, "slot %zd out of range", longest);
    Py_ssize_t sources = PyList_GET_SIZE(usable);
    if (PyList_GET_SIZE(carriers) != sources)
        return PyErr_Format(PyExc_ValueError, "route(): usable and carriers differ in length");

    Py_ssize_t rate = -1, source = -1, slot = longest;
    for (int steps = 0; slot >= 0 && rate < 0; steps++) {
        if (slot >= slots || steps > 65536)
            return damaged("parent");
        Py_ssize_t end = (Py_ssize_t)item(&self->offsets, slot + 1);
        if (end > self->source.count)
            return damaged("offsets");
        for (Py_ssize_t i = (Py_ssize_t)item(&self->offsets, slot); i < end; i++) {
            Py_ssize_t pair = (Py_ssize_t)item(&self->source, i);
            long carrier;
            if (usable_of(usable, pair, &carrier) < 0)
                return NULL;
            if (carrier >= 0) {
                rate = i;
                source = pair;
                break;
            }
        }
        if (rate < 0)
            slot = (Py_ssize_t)item(&self->parent, slot);
    }
    if (rate < 0) {
        PyObject *none = PyTuple_New(0);
        if (!none)
            return NULL;
        PyObject *result = PyTuple_Pack(2, Py_None, none);
        Py_DECREF(none);
        return result;
    }
    long length = self->coded ? (long)(item(&self->codes, slot) & 31) : (long)item(&self->length, slot);
    PyObject *key = PyUnicode_Substring(args[4], 0, length);
    if (!key)
        return NULL;
    PyObject *price = make_rate(self, rate, key, source);
    Py_DECREF(key);
    if (!price)
        return NULL;

    PyObject *found;
    if (!offers) {
        found = PyTuple_New(0);
    } else {
        Py_ssize_t start = (Py_ssize_t)item(&self->chain_offsets, longest);
        Py_ssize_t end = (Py_ssize_t)item(&self->chain_offsets, longest + 1);
        if (start > end || end > self->chain.count) {
            Py_DECREF(price);
            return damaged("chain_offsets");
        }
        /* per carrier number (usable's values, below `sources`), the position of its offer: the entry of
           least depth, the first of those */
        int64_t small_depth[64], small_position[64];
        int64_t *depth = small_depth, *position = small_position;
        if (sources > 64) {
            depth = PyMem_Malloc(sizeof(int64_t) * 2 * (size_t)sources);
            if (!depth) {
                Py_DECREF(price);
                return PyErr_NoMemory();
            }
            position = depth + sources;
        }
        for (Py_ssize_t c = 0; c < sources; c++)
            position[c] = -1;
        Py_ssize_t count = 0;
        PyObject *error = NULL;
        for (Py_ssize_t p = start; p < end; p++) {
            Py_ssize_t entry = (Py_ssize_t)item(&self->chain, p);
            long carrier;
            if (usable_of(usable, entry, &carrier) < 0) {
                error = Py_None;
                break;
            }
            if (carrier < 0)
                continue;
            if (carrier >= sources) {
                damaged("a carrier number beyond the sources");
                error = Py_None;
                break;
            }
            int64_t level = item(&self->chain_depth, p);
            if (position[carrier] < 0) {
                count++;
                position[carrier] = p;
                depth[carrier] = level;
            } else if (level < depth[carrier]) {
                position[carrier] = p;
                depth[carrier] = level;
            }
        }
        found = error ? NULL : PyTuple_New(count);
        if (found) {
            Py_ssize_t n = 0;
            for (Py_ssize_t p = start; p < end && n < count; p++) {
                Py_ssize_t entry = (Py_ssize_t)item(&self->chain, p);
                long carrier = PyLong_AsLong(PyList_GET_ITEM(usable, entry));
                if (carrier >= 0 && position[carrier] == p) {
                    PyObject *offer = PyList_GET_ITEM(carriers, entry);
                    Py_INCREF(offer);
                    PyTuple_SET_ITEM(found, n++, offer);
                }
            }
        }
        if (depth != small_depth)
            PyMem_Free(depth);
    }
    if (!found) {
        Py_DECREF(price);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (!result) {
        Py_DECREF(price);
        Py_DECREF(found);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, price);
    PyTuple_SET_ITEM(result, 1, found);
    return result;
}

static PyMethodDef Columns_methods[] = {
    {"walk", (PyCFunction)Columns_walk, METH_O, "The slot of the longest number key the number starts with, or -1."},
    {"route", (PyCFunction)(void (*)(void))Columns_route, METH_FASTCALL,
     "route(usable, carriers, longest, offers, number) -> (price Rate or None, offers tuple)."},
    {"prices", (PyCFunction)Columns_prices, METH_VARARGS, "What route() makes the price's Rate of (once)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "agent.pricing._route.Columns",
    .tp_basicsize = sizeof(Columns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A deck's routing columns (buffers of its map).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Columns_init,
    .tp_dealloc = (destructor)Columns_dealloc,
    .tp_methods = Columns_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_route",
                                    .m_doc = "Routing over a deck's columns.", .m_size = -1};

PyMODINIT_FUNC PyInit__route(void) {
    if (PyType_Ready(&ColumnsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&ColumnsType);
    if (PyModule_AddObject(m, "Columns", (PyObject *)&ColumnsType) < 0) {
        Py_DECREF(&ColumnsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
