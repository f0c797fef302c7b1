/// A binary min-heap: `pop` returns the smallest element by `<` (the tokenizers' merge queues).
struct BinaryHeap<Element: Comparable> {
    private(set) var elements = [Element]()

    init() {}

    var isEmpty: Bool { elements.isEmpty }
    var first: Element? { elements.first }

    mutating func push(_ e: Element) {
        elements.append(e)
        var i = elements.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard elements[i] < elements[parent] else { break }
            elements.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Element? {
        guard let top = elements.first else { return nil }
        let last = elements.removeLast()
        guard !elements.isEmpty else { return top }
        elements[0] = last
        var i = 0
        let n = elements.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n, elements[l] < elements[m] { m = l }
            if r < n, elements[r] < elements[m] { m = r }
            guard m != i else { break }
            elements.swapAt(i, m)
            i = m
        }
        return top
    }
}
