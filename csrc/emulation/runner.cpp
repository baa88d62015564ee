// The executable of the sanitizer builds: AddressSanitizer and ThreadSanitizer cannot be loaded into a
// running Python, so the driver writes one call into a file, runs this program on it, and reads the
// buffers back. Request (little-endian): op name, buffers, ints, reals, the emulated device; see
// tests/cuda_emulation/harness.py (_write_request) for the layout. The op is found by name (emu_op_NAME)
// among this executable's own symbols.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" int emu_set_device(int major, int minor, int smem_optin, const char* images);
extern "C" void emu_set_schedule(int schedule);
extern "C" const char* emu_last_error_message();

namespace {

constexpr uint64_t kNull = ~0ULL;  // a buffer length meaning "null pointer"

struct Reader {
  FILE* f;
  template <typename T>
  T get() {
    T v;
    if (std::fread(&v, sizeof(T), 1, f) != 1) throw std::string("truncated request");
    return v;
  }
  std::string str() {
    std::string s(get<uint32_t>(), '\0');
    if (!s.empty() && std::fread(&s[0], 1, s.size(), f) != s.size()) throw std::string("truncated request");
    return s;
  }
};

int run(const char* request, const char* response) {
  FILE* in = std::fopen(request, "rb");
  if (!in) throw std::string("cannot open ") + request;
  Reader r{in};
  const std::string op = r.str();
  const uint32_t n_buf = r.get<uint32_t>();
  std::vector<std::vector<unsigned char>> storage(n_buf);
  std::vector<uint64_t> sizes(n_buf);
  std::vector<void*> buffers(n_buf, nullptr);
  std::vector<unsigned char*> heap(n_buf, nullptr);
  for (uint32_t i = 0; i < n_buf; ++i) {
    sizes[i] = r.get<uint64_t>();
    if (sizes[i] == kNull) continue;
    // malloc of the exact size, so AddressSanitizer's red zones sit right after the array's last byte
    heap[i] = static_cast<unsigned char*>(std::malloc(sizes[i] ? sizes[i] : 1));
    if (sizes[i] && std::fread(heap[i], 1, sizes[i], in) != sizes[i]) throw std::string("truncated request");
    buffers[i] = heap[i];
  }
  std::vector<int64_t> ints(r.get<uint32_t>());
  for (auto& v : ints) v = r.get<int64_t>();
  std::vector<double> reals(r.get<uint32_t>());
  for (auto& v : reals) v = r.get<double>();
  const int major = r.get<int32_t>(), minor = r.get<int32_t>(), optin = r.get<int32_t>(), schedule = r.get<int32_t>();
  const std::string images = r.str();
  std::fclose(in);

  emu_set_device(major, minor, optin, images.c_str());
  emu_set_schedule(schedule);
  using Op = int (*)(void**, const int64_t*, const double*);
  auto fn = reinterpret_cast<Op>(dlsym(RTLD_DEFAULT, ("emu_op_" + op).c_str()));
  if (!fn) throw "no emulated op named " + op;
  ints.push_back(0);  // never an empty array
  reals.push_back(0.0);
  const int rc = fn(buffers.data(), ints.data(), reals.data());
  const std::string message = rc ? emu_last_error_message() : "";

  FILE* out = std::fopen(response, "wb");
  if (!out) throw std::string("cannot write ") + response;
  const int32_t rc32 = rc;
  const uint32_t len = static_cast<uint32_t>(message.size());
  std::fwrite(&rc32, 4, 1, out);
  std::fwrite(&len, 4, 1, out);
  std::fwrite(message.data(), 1, len, out);
  for (uint32_t i = 0; i < n_buf; ++i)
    if (sizes[i] != kNull) std::fwrite(heap[i], 1, sizes[i], out);
  std::fclose(out);
  for (auto* p : heap) std::free(p);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s REQUEST RESPONSE\n", argv[0]);
    return 2;
  }
  try {
    return run(argv[1], argv[2]);
  } catch (const std::string& e) {
    std::fprintf(stderr, "emulation runner: %s\n", e.c_str());
    return 2;
  }
}
